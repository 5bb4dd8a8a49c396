"""jaxrun's node agent, as torch elastic's: rendezvous, workers, supervision.

Each node runs one agent. The agents meet in rounds through a store (launch.store):
a round closes when enough nodes have joined, fixes the node order and the JAX
coordinator's address, and each agent then starts its node's workers with the
environment torchrun gives. While they run, every agent watches its own workers and
the round's shared state. A failed worker (or a silent node) fails the whole round:
every agent stops its workers (SIGTERM, then SIGKILL after --shutdown_timeout), since an
SPMD program cannot go on without one of its processes, and all agents join the next
round, up to --max_restarts times; the
trainer resumes from its last checkpoint. SIGTERM/SIGINT to an agent is forwarded to
its workers, which checkpoint and exit, and to the other nodes' workers through the
store. A node that joins an elastic job (--nnodes MIN:MAX) while it runs ends the
round the same way, without counting a restart, so the job continues on more nodes
from its last checkpoint.
"""

import collections
import dataclasses
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from launch.store import StoreClient, StoreServer

TAIL_LINES = 40
KEEP_ALIVE_S = 30.0  # a node silent for this long has failed
PARTIAL_LINE_S = 0.1


@dataclasses.dataclass
class Job:
    command: list  # the worker command line
    nproc: int
    min_nodes: int
    max_nodes: int
    backend: str  # "static" or "c10d"
    endpoint: tuple  # (host, port) of the store
    node_rank: int  # static backend only
    run_id: str
    role: str
    max_restarts: int
    monitor_interval: float
    log_dir: str | None
    redirects: dict  # local rank -> bits: 1 stdout, 2 stderr
    tee: dict
    local_ranks_filter: set | None
    join_timeout: float
    last_call_timeout: float
    shutdown_timeout: float
    local_addr: str | None
    signals: tuple = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)  # forwarded to the workers


@dataclasses.dataclass
class World:
    round: int
    members: list  # one dict per node, in node-rank order
    node: int  # this agent's node rank
    coordinator: str  # host:port of the JAX coordinator, on node 0

    def first_rank(self, node: int) -> int:
        return sum(m["nproc"] for m in self.members[:node])

    @property
    def world_size(self) -> int:
        return self.first_rank(len(self.members))


class Signalled(Exception):
    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def log(message):
    print(f"jaxrun: {message}", file=sys.stderr, flush=True)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited with code {code}"


class Rendezvous:
    def __init__(self, job: Job):
        self.job = job
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        host, port = job.endpoint
        self.server = None
        if job.backend == "static":
            if job.node_rank == 0:
                try:
                    self.server = StoreServer("", port)
                except OSError as e:
                    raise RuntimeError(
                        f"node 0 cannot host the rendezvous store on port {port} ({e}): "
                        "is another job using this --master_port?"
                    ) from None
        else:
            try:  # binds only where the endpoint's host is this machine, and only once
                self.server = StoreServer(host, port)
            except OSError:
                pass
        self.store = StoreClient(host, port, self.name, job.join_timeout)
        self.address = job.local_addr or self.store.local_address()
        found = self.store.setdefault("run_id", job.run_id)
        if found != job.run_id:
            raise RuntimeError(f"the rendezvous at {host}:{port} belongs to run {found!r}, not {job.run_id!r}")
        self._heartbeat = threading.Thread(target=self._beat, daemon=True)
        self._heartbeat.start()

    def _beat(self):
        client = StoreClient(*self.job.endpoint, self.name, self.job.join_timeout)
        while True:
            time.sleep(1.0)
            try:
                client.ping()
            except OSError:
                return  # the main loop notices a lost store on its next request

    def current_round(self) -> int:
        return self.store.max("round", 0)

    def join(self, n: int) -> World:
        """Joins round n (or the first one still open after it) and waits for it to close."""
        job, store = self.job, self.store
        while True:
            n = store.max("round", n)
            index = store.add(f"{n}/joined", 1) - 1
            me = {
                "name": self.name,
                "host": socket.gethostname(),
                "addr": self.address,
                "nproc": job.nproc,
                "role": job.role,
                "node_rank": job.node_rank if job.backend == "static" else None,
            }
            store.set(f"{n}/member/{index}", me)
            if index == 0:
                self._close_round(n)
            size = store.wait(f"{n}/closed", job.join_timeout + job.last_call_timeout + 10)
            if isinstance(size, str):
                raise RuntimeError(size)
            if index < size:
                break
            log(f"round {n} closed before this node joined; waiting for the next")
            n += 1
        members = store.get_many(f"{n}/member/{i}" for i in range(size))
        if job.backend == "static":
            ranks = sorted(m["node_rank"] for m in members)
            if ranks != list(range(size)):
                raise RuntimeError(f"static rendezvous: node ranks {ranks} should be 0..{size - 1}, each once")
            members.sort(key=lambda m: m["node_rank"])
        node = [m["name"] for m in members].index(self.name)
        if node == 0:
            host = job.endpoint[0] if job.backend == "static" else self.address
            store.set(f"{n}/coordinator", f"{host}:{free_port()}")
        coordinator = store.wait(f"{n}/coordinator", job.join_timeout)
        return World(n, members, node, coordinator)

    def _close_round(self, n: int):
        job, store = self.job, self.store
        start, enough_since = time.monotonic(), None
        while True:
            joined = store.get(f"{n}/joined")
            now = time.monotonic()
            if joined >= job.max_nodes:
                break
            if joined >= job.min_nodes:
                enough_since = enough_since or now
                if now - enough_since >= job.last_call_timeout:
                    break
            elif now - start > job.join_timeout:
                store.set(
                    f"{n}/closed", f"only {joined} of {job.min_nodes} nodes joined within {job.join_timeout:.0f} s"
                )
                raise RuntimeError(f"rendezvous timed out: only {joined} of {job.min_nodes} nodes joined")
            time.sleep(0.05)
        store.setdefault(f"{n}/closed", min(joined, job.max_nodes))

    def leave(self, world: World):
        """Says this agent is done; the store's host lingers until all have said so (30 s at most)."""
        try:
            self.store.add(f"{world.round}/left", 1)
            deadline = time.monotonic() + 30
            while self.server is not None and time.monotonic() < deadline:
                if self.store.get(f"{world.round}/left") >= len(world.members):
                    break
                time.sleep(0.05)
        except (OSError, Signalled):
            pass  # nothing is left to tell the others
        self.store.close()
        if self.server is not None:
            self.server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _parent_death_signal():
    """A preexec_fn that has the kernel SIGKILL the worker when the agent dies, however it
    dies (SIGKILL included): no worker outlives its agent. prctl is looked up here, before
    the fork, so the child runs no Python that could need a lock another thread holds."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    agent = os.getpid()

    def set_in_child():
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != agent:  # the agent died before the line above
            os._exit(1)

    return set_in_child


class Workers:
    """This node's worker processes of one round, with their output pumped to logs and console.

    Output reaches the console a whole line at a time (a progress bar's carriage returns
    too), so workers' lines never interleave, each led by ``[<role><local rank>]:`` as
    torchrun's --tee. Where the console is a terminal, a worker writes to a terminal of its
    own (a pty), so it sees one as under torchrun. Workers share the agent's stdin, so breakpoint() and input() work.
    """

    def __init__(self, job: Job, world: World, restarts: int, log_dir: str):
        self.job, self.world = job, world
        first = world.first_rank(world.node)
        self.ranks = list(range(first, first + job.nproc))
        self.tails = {r: collections.deque(maxlen=TAIL_LINES) for r in self.ranks}
        self.print_lock = threading.Lock()
        self.pumps = {r: [] for r in self.ranks}
        self.log_dir = os.path.join(log_dir, f"attempt_{world.round}")
        self.procs = [self._start(local, restarts) for local in range(job.nproc)]

    def error_file(self, local: int) -> str:
        return os.path.join(self.log_dir, str(local), "error.json")

    def _env(self, local: int, restarts: int) -> dict:
        job, world = self.job, self.world
        same_role = [i for i, m in enumerate(world.members) if m["role"] == job.role]
        role_first = sum(world.members[i]["nproc"] for i in same_role if i < world.node)
        host, port = world.coordinator.rsplit(":", 1)
        env = dict(os.environ)
        env.update(
            RANK=self.ranks[local],
            LOCAL_RANK=local,
            WORLD_SIZE=world.world_size,
            LOCAL_WORLD_SIZE=job.nproc,
            GROUP_RANK=world.node,
            GROUP_WORLD_SIZE=len(world.members),
            ROLE_RANK=role_first + local,
            ROLE_WORLD_SIZE=sum(world.members[i]["nproc"] for i in same_role),
            ROLE_NAME=job.role,
            MASTER_ADDR=host,
            MASTER_PORT=port,
            TORCHELASTIC_RESTART_COUNT=restarts,
            TORCHELASTIC_MAX_RESTARTS=job.max_restarts,
            TORCHELASTIC_RUN_ID=job.run_id,
            TORCHELASTIC_ERROR_FILE=self.error_file(local),
        )
        if "OMP_NUM_THREADS" not in os.environ and job.nproc > 1:
            env["OMP_NUM_THREADS"] = 1
        if "GLIBC_TUNABLES" not in os.environ:
            # Huge pages for malloc's large blocks: XLA:CPU allocates a step's gradients and
            # activations afresh each step, and faulting them in 4 KiB pages cost DiT-XL/2 12% of
            # its CPU train step (BENCHMARKS.md). Only the host's allocator is affected.
            env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
        return {k: str(v) for k, v in env.items()}

    def _start(self, local: int, restarts: int):
        rank, job = self.ranks[local], self.job
        os.makedirs(os.path.join(self.log_dir, str(local)), exist_ok=True)
        streams = []
        for bit, console in ((1, sys.stdout), (2, sys.stderr)):
            redirected = job.redirects.get(local, 0) & bit and not job.tee.get(local, 0) & bit
            shown = not redirected and (job.local_ranks_filter is None or local in job.local_ranks_filter)
            logged = job.redirects.get(local, 0) & bit or job.tee.get(local, 0) & bit
            path = os.path.join(self.log_dir, str(local), "stdout.log" if bit == 1 else "stderr.log")
            read_fd, write_fd = _terminal() if shown and console.isatty() else os.pipe()
            streams.append((read_fd, write_fd, path if logged else None, console if shown else None))
        command = [a.replace("${local_rank}", str(local)) for a in job.command]  # torchrun's macro
        # Each worker leads its own session (a Ctrl-C at the terminal reaches the agent alone,
        # which forwards it once), and dies with the agent.
        proc = subprocess.Popen(
            command,
            env=self._env(local, restarts),
            stdout=streams[0][1],
            stderr=streams[1][1],
            start_new_session=True,
            preexec_fn=_parent_death_signal(),
        )
        log(f"started rank {rank} (local rank {local}, pid {proc.pid}, round {self.world.round})")
        for read_fd, write_fd, path, console in streams:
            os.close(write_fd)
            pump = threading.Thread(target=self._pump, args=(read_fd, rank, local, path, console), daemon=True)
            pump.start()
            self.pumps[rank].append(pump)
        return proc

    def _pump(self, fd, rank, local, path, console):
        """Copies a worker's stream to its log file as is, and to the console line by line
        with the local-rank prefix, so that lines of different workers never interleave. A
        partial line (a prompt, a progress bar's last redraw) is shown once the worker has
        written nothing for PARTIAL_LINE_S."""
        prefix = f"[{self.job.role}{local}]:".encode()
        log_file = open(path, "ab") if path else None
        out = console.buffer if console else None
        line, pending, at_start = b"", b"", True

        def show(data: bytes):
            if out and data:
                with self.print_lock:
                    out.write(data)
                    out.flush()

        try:
            while True:
                if pending and not select.select([fd], [], [], PARTIAL_LINE_S)[0]:
                    show(pending)
                    pending = b""
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # a pty whose worker has exited
                    chunk = b""
                if not chunk:
                    break
                if log_file:
                    log_file.write(chunk)
                    log_file.flush()
                for piece in re.split(rb"(\r\n|\r|\n)", chunk):
                    if piece in (b"\r\n", b"\r", b"\n"):
                        if piece != b"\r":  # a carriage return redraws the line: not one for the tail
                            self.tails[rank].append(line.decode("utf-8", "replace"))
                        show(pending + piece)
                        line, pending, at_start = b"", b"", True
                    elif piece:
                        if at_start:
                            pending += prefix
                            at_start = False
                        line += piece
                        pending += piece
            show(pending)
            if line:
                self.tails[rank].append(line.decode("utf-8", "replace"))
        finally:
            os.close(fd)
            if log_file:
                log_file.close()

    def poll(self) -> list:
        return [p.poll() for p in self.procs]

    def send(self, signum):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signum)

    def kill(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the worker and whatever it started
            except ProcessLookupError:
                pass
        for p in self.procs:
            p.wait()

    def stop(self):
        """As torch elastic stops a group: SIGTERM, time to checkpoint and clean up, then SIGKILL."""
        self.send(signal.SIGTERM)
        if not self.wait(self.job.shutdown_timeout):
            log(f"workers still running {self.job.shutdown_timeout:.0f} s after SIGTERM: killing them")
        self.kill()

    def wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while any(code is None for code in self.poll()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def failure(self, local: int, code: int) -> dict:
        rank = self.ranks[local]
        for pump in self.pumps[rank]:  # its last lines (a child it left may hold the pipe open)
            pump.join(timeout=1.0)
        return {
            "rank": rank,
            "local_rank": local,
            "node": self.world.node,
            "host": socket.gethostname(),
            "exit": code,
            "time": time.time(),
            "tail": list(self.tails[rank]),
            "log_dir": self.log_dir,
            "error": _error_message(self.error_file(local)),
        }


def _terminal():
    """(read, write) ends of a new pty in raw mode: a worker's output exactly as written."""
    import pty
    import tty

    master, slave = pty.openpty()
    tty.setraw(slave)
    return master, slave


def _error_message(path: str) -> str:
    """The message a worker left in TORCHELASTIC_ERROR_FILE (torch's @record format), or ''."""
    try:
        with open(path) as f:
            message = json.load(f)["message"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return message.get("message", "") if isinstance(message, dict) else str(message)


class Agent:
    def __init__(self, job: Job):
        self.job = job
        self.workers = None
        self.world = None

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in self.job.signals}
        try:
            # torchrun's layout: <log_dir>/<run_id>_<random>/attempt_<round>/<local_rank>/, never reused.
            import tempfile

            if self.job.log_dir:
                os.makedirs(self.job.log_dir, exist_ok=True)
            self.log_dir = tempfile.mkdtemp(prefix=f"{self.job.run_id}_", dir=self.job.log_dir)
            if not self.job.log_dir and any(self.job.redirects.values()) | any(self.job.tee.values()):
                log(f"no --log_dir: logs go to {self.log_dir}")
            self.rdzv = Rendezvous(self.job)
            try:
                return self._run()
            except Signalled as s:
                return self._shut_down(s.signum, forward=True)
            finally:
                if self.workers is not None:  # also when the store is lost: no orphans
                    self.workers.kill()
                if self.world is not None:
                    self.rdzv.leave(self.world)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, signum, frame):
        raise Signalled(signum)

    def _run(self) -> int:
        job, restarts, n = self.job, 0, self.rdzv.current_round()
        while True:
            self.world = world = self.rdzv.join(n)
            log(
                f"round {world.round}: node {world.node} of {len(world.members)}, ranks "
                f"{world.first_rank(world.node)}..{world.first_rank(world.node) + job.nproc - 1} of "
                f"{world.world_size}, coordinator {world.coordinator}, restart {restarts}/{job.max_restarts}"
            )
            self.workers = Workers(job, world, restarts, self.log_dir)
            outcome = self._watch(world)
            self.workers = None
            if outcome == "succeeded":
                return 0
            if isinstance(outcome, int):  # another node passed on a signal
                return outcome
            if outcome == "membership":
                log(f"a node is waiting to join: round {world.round} ends and the group restarts on more nodes")
            else:
                first = min(outcome, key=lambda f: (f["time"], f.get("rank", 0)))
                if restarts >= job.max_restarts:
                    log(failure_summary(first, job.max_restarts))
                    return 1
                restarts += 1
                log(f"{_failed(first)}; restarting the group ({restarts}/{job.max_restarts})")
            n = world.round + 1

    def _watch(self, world: World):
        """Waits for the round to end: "succeeded", "membership", a list of failures, or an exit code."""
        job, store, n = self.job, self.rdzv.store, world.round
        names = [m["name"] for m in world.members]
        reported_done, last_liveness = False, time.monotonic()
        while True:
            codes = self.workers.poll()
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                for local, code in failed:
                    store.append(f"{n}/failures", self.workers.failure(local, code))
                self.workers.stop()
                return store.get(f"{n}/failures")
            if not reported_done and all(c == 0 for c in codes):
                store.add(f"{n}/done", 1)
                reported_done = True
            failures, shutdown, done, waiting = store.get_many(
                [f"{n}/failures", "shutdown", f"{n}/done", f"{n + 1}/joined"]
            )
            if failures:
                self.workers.stop()
                return failures
            if shutdown:
                return self._shut_down(shutdown, forward=False)
            if done == len(world.members):
                return "succeeded"
            if waiting and len(world.members) < job.max_nodes and not reported_done:
                self.workers.send(signal.SIGTERM)  # the trainer checkpoints before it exits
                if not self.workers.wait(job.shutdown_timeout):
                    self.workers.kill()
                return "membership"
            if time.monotonic() - last_liveness > 1.0:
                last_liveness = time.monotonic()
                for name in store.silent(names, KEEP_ALIVE_S):
                    node = names.index(name)
                    store.append(
                        f"{n}/failures",
                        {"node": node, "host": world.members[node]["host"], "lost": KEEP_ALIVE_S, "time": time.time()},
                    )
            time.sleep(job.monitor_interval)

    def _shut_down(self, signum: int, forward: bool) -> int:
        """Passes a signal to this node's workers (and, if it came here, to the other nodes')."""
        name = signal.Signals(signum).name
        if forward:
            log(f"{name} received: passing it to the workers")
            try:
                self.rdzv.store.setdefault("shutdown", signum)
            except (OSError, Signalled):
                pass  # the other nodes will lose this one and stop on their own
        if self.workers is not None:
            self.workers.send(signum)
            try:
                if not self.workers.wait(self.job.shutdown_timeout):
                    log(f"workers still running {self.job.shutdown_timeout:.0f} s after {name}: killing them")
                    self.workers.kill()
            except Signalled:
                log("second signal: killing the workers")
                self.workers.kill()
        return 128 + signum


def _failed(f: dict) -> str:
    if "lost" in f:
        return f"node {f['node']} ({f['host']}) stopped answering for {f['lost']:.0f} s"
    return (
        f"rank {f['rank']} (local rank {f['local_rank']} on node {f['node']}, {f['host']}) {describe_exit(f['exit'])}"
    )


def failure_summary(first: dict, max_restarts: int) -> str:
    lines = [
        f"the worker group failed and no restarts are left (--max_restarts={max_restarts})",
        f"first failure: {_failed(first)}",
    ]
    if first.get("error"):
        lines.append(f"error (from its TORCHELASTIC_ERROR_FILE): {first['error']}")
    if first.get("log_dir"):
        lines.append(f"logs: {first['log_dir']}")
    if first.get("tail"):
        lines.append(f"last {len(first['tail'])} lines of rank {first['rank']}'s output:")
        lines += ["    " + line for line in first["tail"]]
    return "\n".join(lines)
