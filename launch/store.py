"""The key-value store through which the node agents of one job meet.

One agent hosts it (node 0, or the endpoint's host under c10d), as torch elastic's
agents share a TCPStore. JAX's coordination service cannot serve here: it lives
inside the workers, which come and go with every restart. Requests are JSON lines;
the server also notes when it last heard from each agent, which is how a lost node
is noticed.
"""

import json
import socket
import socketserver
import threading
import time


class StoreServer:
    def __init__(self, host: str, port: int):
        self.data, self.seen, self.lock = {}, {}, threading.Lock()
        store = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                for line in self.rfile:
                    request = json.loads(line)
                    with store.lock:
                        store.seen[request["name"]] = time.monotonic()
                        reply = store._apply(request)
                    self.wfile.write(json.dumps({"value": reply}).encode() + b"\n")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((host, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _apply(self, r):
        op, data = r["op"], self.data
        if op == "get":
            return [data.get(k) for k in r["keys"]]
        if op == "set":
            data[r["key"]] = r["value"]
        elif op == "setdefault":  # first writer wins
            return data.setdefault(r["key"], r["value"])
        elif op == "add":
            data[r["key"]] = data.get(r["key"], 0) + r["value"]
            return data[r["key"]]
        elif op == "max":
            data[r["key"]] = max(data.get(r["key"], r["value"]), r["value"])
            return data[r["key"]]
        elif op == "append":
            data.setdefault(r["key"], []).append(r["value"])
        elif op == "silent":  # names not heard from for `seconds`
            now = time.monotonic()
            return [n for n in r["names"] if now - self.seen.get(n, now) > r["seconds"]]
        elif op != "ping":
            raise ValueError(f"unknown store operation {op!r}")
        return None

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class StoreClient:
    """One connection to the store; reconnects after an interrupted request."""

    def __init__(self, host: str, port: int, name: str, connect_timeout_s: float):
        self.address, self.name, self.connect_timeout_s = (host, port), name, connect_timeout_s
        self.sock = None
        self._connect()

    def _connect(self):
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                self.sock = socket.create_connection(self.address, timeout=60)
                self.file = self.sock.makefile("rwb")
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    host, port = self.address
                    raise ConnectionError(
                        f"cannot reach the rendezvous store at {host}:{port} after {self.connect_timeout_s:.0f} s: {e}"
                    ) from None
                time.sleep(0.2)

    def local_address(self) -> str:
        """This machine's address on the route to the store's host."""
        return self.sock.getsockname()[0]

    def _call(self, **request):
        request["name"] = self.name
        try:
            if self.sock is None:
                self._connect()
            self.file.write(json.dumps(request).encode() + b"\n")
            self.file.flush()
            line = self.file.readline()
        except BaseException:
            self.close()  # a half-finished exchange would desynchronise the next one
            raise
        if not line:
            self.close()
            host, port = self.address
            raise ConnectionError(f"the rendezvous store at {host}:{port} closed the connection")
        return json.loads(line)["value"]

    def get(self, key):
        return self._call(op="get", keys=[key])[0]

    def get_many(self, keys):
        return self._call(op="get", keys=list(keys))

    def set(self, key, value):
        self._call(op="set", key=key, value=value)

    def setdefault(self, key, value):
        return self._call(op="setdefault", key=key, value=value)

    def add(self, key, value: int) -> int:
        return self._call(op="add", key=key, value=value)

    def max(self, key, value: int) -> int:
        return self._call(op="max", key=key, value=value)

    def append(self, key, value):
        self._call(op="append", key=key, value=value)

    def silent(self, names, seconds: float) -> list:
        return self._call(op="silent", names=list(names), seconds=seconds)

    def ping(self):
        self._call(op="ping")

    def wait(self, key, timeout_s: float, interval_s: float = 0.05):
        deadline = time.monotonic() + timeout_s
        while (value := self.get(key)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s:.0f} s for {key!r} in the rendezvous store")
            time.sleep(interval_s)
        return value

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
