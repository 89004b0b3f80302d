"""torch_files.save: checkpoint parts without the zip CRC-32s (their sha256 covers every byte),
the model a user keeps with them, and torch's process-wide switch never leaking from one to the other."""
import io
import threading
import zipfile

import torch

from flamby_mpi.storage import torch_files


def _crcs(data: bytes):
    return [info.CRC for info in zipfile.ZipFile(io.BytesIO(data)).infolist() if info.file_size]


def _saved(obj, crc32: bool) -> bytes:
    handle = io.BytesIO()
    torch_files.save(obj, handle, crc32=crc32)
    return handle.getvalue()


def test_a_part_without_crc_reads_back_bitwise_and_the_kept_model_has_them():
    state = {"w": torch.randn(3000, dtype=torch.float64), "n": torch.arange(7), "nested": {"b": torch.ones(2, 2)}}
    bare, checked = _saved(state, crc32=False), _saved(state, crc32=True)
    assert set(_crcs(bare)) == {0}
    assert 0 not in _crcs(checked) and zipfile.ZipFile(io.BytesIO(checked)).testzip() is None
    for data in (bare, checked):
        back = torch.load(io.BytesIO(data), weights_only=True)
        assert back["w"].numpy().tobytes() == state["w"].numpy().tobytes()
        assert torch.equal(back["n"], state["n"]) and torch.equal(back["nested"]["b"], state["nested"]["b"])
    # The switch is left as torch's default for any other caller.
    assert torch.serialization.get_crc32_options() is True


class _HeldWrite(io.BytesIO):
    """A file whose first write waits until released: a part's save stopped with the switch off."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def write(self, data):
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)
        return super().write(data)


def test_a_save_with_crc_never_opens_while_a_part_without_them_is_being_written():
    part = _HeldWrite()
    writer = threading.Thread(target=torch_files.save, args=({"w": torch.randn(10_000)}, part, False))
    writer.start()
    assert part.entered.wait(30)
    kept = io.BytesIO()
    keeper = threading.Thread(target=torch_files.save, args=({"m": torch.randn(10_000)}, kept, True))
    keeper.start()
    keeper.join(0.3)
    waited = keeper.is_alive()  # it waits for the part's save, which holds torch's switch off
    part.release.set()
    writer.join(30)
    keeper.join(30)
    assert waited
    assert 0 not in _crcs(kept.getvalue()) and zipfile.ZipFile(io.BytesIO(kept.getvalue())).testzip() is None
    assert set(_crcs(part.getvalue())) == {0}
