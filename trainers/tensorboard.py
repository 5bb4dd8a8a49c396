"""Scalars in TensorBoard's event-file format, written without TensorFlow, torch or protobuf.

An event file is a sequence of records (little-endian length, its masked CRC-32C, the bytes,
their masked CRC-32C), each an `Event` protocol buffer: the first names the file version,
the others hold a `Summary` of scalar values at a step. Only the fields TensorBoard reads
for scalars are written (tensorflow/core/util/event.proto, summary.proto). tensorboardX
writes the same records, but importing it imports torch where torch is installed: seconds
added to every training process of a JAX project.
"""

import os
import socket
import struct
import time


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): a string or a nested message."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    # Event: wall_time = 1 (double), step = 2 (int64), file_version = 3, summary = 5.
    return _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step) + body


def _scalar(tag: str, value: float) -> bytes:
    # Summary.Value: tag = 1 (string), simple_value = 2 (float).
    return _field(1, _field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))


class EventWriter:
    """Writes ``events.out.tfevents.<time>.<host>`` in ``logdir``; TensorBoard reads it as it grows."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        now = time.time()
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}")
        self.file = open(self.path, "ab")
        self._record(_event(now, 0, _field(3, b"brain.Event:2")))

    def _record(self, data: bytes):
        length = struct.pack("<Q", len(data))
        self.file.write(length + struct.pack("<I", _masked(crc32c(length))))
        self.file.write(data + struct.pack("<I", _masked(crc32c(data))))

    def scalars(self, step: int, values: dict):
        """One event holding every value (tag -> float) at this step."""
        summary = b"".join(_scalar(tag, float(v)) for tag, v in values.items())
        self._record(_event(time.time(), step, _field(5, summary)))

    def flush(self):
        self.file.flush()

    def close(self):
        self.file.close()
