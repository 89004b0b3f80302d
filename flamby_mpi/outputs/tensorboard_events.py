"""TensorBoard event files written directly, without importing TensorBoard.

What rank 0 writes is a handful of scalars per round and one text. torch's SummaryWriter is a
costly import (TensorBoard, protobuf), and with the pure-Python protobuf that FedML's pin brings
each scalar it writes was a large share of a small round (docs/benchmarks/2026-11-29.md). The
format is small and stable, so it is written here:

- an event file is a sequence of records: the data's length (uint64, little-endian), the masked
  CRC-32C of those 8 bytes (uint32), the data, the masked CRC-32C of the data;
- each record's data is a serialized `Event` protocol buffer (tensorboard/compat/proto/event.proto):
  wall_time (1, double), step (2, int64), file_version (3, string), summary (5, Summary) or
  session_log (7, SessionLog: status (1), START = 1);
- Summary: repeated value (1); Summary.Value: tag (1), simple_value (2, float) for a scalar, or
  tensor (8, TensorProto) with metadata (9, SummaryMetadata naming the plugin) for a text.

tests/test_unit_telemetry.py checks the bytes against protobuf's own serialization of the same
messages, and the files against TensorBoard's reader.
"""
from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path
from typing import Dict, Optional

from ..storage import safe_files

FILE_VERSION = "brain.Event:2"
_DT_STRING = 7  # TensorProto.dtype of a text summary


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One record of an event file around `data`."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# ---- protocol buffer fields (the wire format: a key varint, then the value) ----------------------

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values take ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _varint_field(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _double_field(field: int, value: float) -> bytes:
    return _key(field, 1) + struct.pack("<d", value)


def _float_field(field: int, value: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", value)


def _bytes_field(field: int, value: bytes) -> bytes:
    return _key(field, 2) + _varint(len(value)) + value


_SESSION_START = 1  # SessionLog.SessionStatus.START


def event(wall_time: float, step: int = 0, *, file_version: Optional[str] = None,
          summary: Optional[bytes] = None, session_start: bool = False) -> bytes:
    """A serialized Event (proto3: a zero step is left out, as protobuf leaves it)."""
    out = _double_field(1, wall_time) if wall_time else b""
    if step:
        out += _varint_field(2, step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if summary is not None:
        out += _bytes_field(5, summary)
    if session_start:
        out += _bytes_field(7, _varint_field(1, _SESSION_START))  # session_log: SessionLog(status=START)
    return out


def scalars_summary(scalars: Dict[str, float]) -> bytes:
    """A serialized Summary of simple values (float32, as TensorBoard stores scalars)."""
    return b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _float_field(2, float(value)))
                    for tag, value in scalars.items())


def text_summary(tag: str, text: str) -> bytes:
    """A serialized Summary holding one text for TensorBoard's text plugin, under `tag`/text_summary."""
    shape = _bytes_field(2, _varint_field(1, 1))  # TensorShapeProto: one dim of size 1
    tensor = _varint_field(1, _DT_STRING) + _bytes_field(2, shape) + _bytes_field(8, text.encode("utf-8"))
    metadata = _bytes_field(1, _bytes_field(1, b"text"))  # SummaryMetadata.plugin_data.plugin_name
    value = _bytes_field(1, f"{tag}/text_summary".encode()) + _bytes_field(8, tensor) + _bytes_field(9, metadata)
    return _bytes_field(1, value)


class EventFileWriter:
    """One event file in `directory`, named as TensorBoard's writers name theirs; every write is
    flushed, so TensorBoard shows a run while it runs. Opened by safe_files.open_append: the
    directory (below its parent, the run's directory) and the file are never links."""

    def __init__(self, directory: Path):
        directory = Path(directory)
        now = time.time()
        for number in itertools.count():  # a new file per session, even two in one process and second
            name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.{number}"
            try:
                self._file = safe_files.open_append(directory.parent, f"{directory.name}/{name}", new=True)
                break
            except FileExistsError:
                continue
        self.path = directory / name
        self._append(event(now, file_version=FILE_VERSION))

    def _append(self, data: bytes):
        self._file.write(record(data))
        self._file.flush()

    def scalars(self, step: int, scalars: Dict[str, float]):
        if scalars:
            self._append(event(time.time(), step, summary=scalars_summary(scalars)))

    def session_start(self, step: int):
        """A session starts at `step`. TensorBoard takes every start after a run's first as a
        restart and drops what earlier files hold at this step and later: the rounds a resumed run
        repeats are shown once, from the run that went on."""
        self._append(event(time.time(), step, session_start=True))

    def text(self, step: int, tag: str, text: str):
        self._append(event(time.time(), step, summary=text_summary(tag, text)))

    def close(self):
        if not self._file.closed:
            self._file.close()
