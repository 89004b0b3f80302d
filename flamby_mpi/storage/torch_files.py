"""torch.save into a file being written, with or without the zip format's CRC-32 of every record.

A checkpoint part's every byte is covered by the sha256 its manifest holds, and checked against it
before torch.load reads anything (checkpoints/checkpoint.py); the CRC-32s torch.save computes
besides cost about 0.7 s of CPU per GB (72 ms for the 100 MB benchmark model), spent by the thread
that writes the part while the next round trains, on the cores that round needs. Parts are saved
without them. The model a user keeps (global_model.pt) keeps them: zip tools check them.

torch's switch (torch.serialization.set_crc32_options) is one per process and read when torch.save
opens its writer: every save here holds one lock and sets the switch for itself, so a save of one
kind never opens its writer under the other's setting. torch.load reads both alike (it does not
check CRC-32s).
"""
from __future__ import annotations

import threading

_SWITCH = threading.Lock()


def save(obj, handle, crc32: bool):
    """torch.save(obj, handle), its records' CRC-32s computed only if crc32."""
    import torch

    with _SWITCH:
        before = torch.serialization.get_crc32_options()
        torch.serialization.set_crc32_options(crc32)
        try:
            torch.save(obj, handle)
        finally:
            torch.serialization.set_crc32_options(before)
