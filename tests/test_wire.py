"""flamby_mpi.transport.wire: tensors as their own memory, bitwise intact; sizes checked before allocating;
over real MPI (mpiexec -n 2) with messages cut in pieces; and a model over 2 GiB (marked heavy)."""
import json
import pickle
import struct
import sys

import numpy as np
import pytest
import torch

from flamby_mpi.transport import wire
from support import mpi as mpi_support
from support.mpi import DEFAULT_CONFIG, TESTS_DIR, mpiexec, run_job, run_mpi


def _state():
    torch.manual_seed(0)
    return {"float": torch.randn(300, 300), "double": torch.randn(70000, dtype=torch.float64),
            "bf16": torch.randn(50000).to(torch.bfloat16), "long": torch.arange(20000),
            "bool": torch.rand(90000) > 0.5, "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4),
            "small": torch.randn(5), "param": torch.nn.Parameter(torch.randn(30000)),
            "transposed": torch.randn(200, 300).t(), "slice": torch.randn(100000)[10:]}


def _bytes(tensor):
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def test_every_tensor_arrives_bitwise_with_its_type_in_its_own_memory():
    state = _state()
    received, size = wire.as_if_sent({"state": state, "pred": np.arange(30000.0)})
    for key, tensor in state.items():
        got = received["state"][key]
        assert type(got) is type(tensor) and got.dtype == tensor.dtype and got.shape == tensor.shape, key
        assert got.requires_grad == tensor.requires_grad, key
        assert torch.equal(_bytes(got), _bytes(tensor)), key  # bitwise, NaN payloads and -0.0 included
        assert tensor.numel() == 0 or got.data_ptr() != tensor.data_ptr(), key  # no aliasing
    assert np.array_equal(received["pred"], np.arange(30000.0))
    header, buffers = wire.encode({"state": state, "pred": np.arange(30000.0)})
    assert size == len(header) + sum(b.nbytes for b in buffers)


def test_large_tensors_leave_the_pickle_small_ones_stay():
    state = _state()
    header, buffers = wire.encode(state)
    out_of_band = {"float": 360000, "double": 560000, "bf16": 100000, "long": 160000, "bool": 90000,
                   "param": 120000, "slice": 399960}
    assert sorted(b.nbytes for b in buffers) == sorted(out_of_band.values())
    # The transposed tensor (not contiguous) is pickled by torch, in the header; nothing else big is.
    assert len(header) < 200 * 300 * 4 + 20000
    # Out-of-band buffers are the tensors' own memory, not copies.
    assert any(np.shares_memory(np.asarray(b), state["float"].numpy()) for b in buffers)


def _header(count, sizes, skeleton=b""):
    return struct.pack("<4sI", wire.MAGIC, count) + b"".join(struct.pack("<Q", s) for s in sizes) + skeleton


@pytest.mark.parametrize("header, says", [
    (b"", "shorter than its fixed part"),
    (b"\x80\x05N.", "shorter than its fixed part"),
    (b"PICKLE\x80\x05N.", "does not start with"),
    (_header(1 << 30, []), "announcing 1073741824 buffers"),
    (_header(3, [1, 2]), "announcing 3 buffers"),
    (_header(2, [1 << 40, 1 << 40]), "announcing 2199023255552 bytes, more than this host can hold"),
    (_header(1, [(1 << 64) - 1]), "more than this host can hold"),
])
def test_forged_headers_are_refused_before_anything_is_allocated(header, says, monkeypatch):
    monkeypatch.setattr(wire, "allocate", lambda sizes: pytest.fail("allocated for a forged header"))
    with pytest.raises(wire.WireError, match=says):
        wire.parse_header(header, limit_bytes=1 << 34)


def test_a_buffer_shorter_than_its_tensor_is_refused():
    header, buffers = wire.encode({"w": torch.randn(100000)})
    sizes, skeleton = wire.parse_header(header, 1 << 34)
    with pytest.raises(wire.WireError, match="arrived with 399996 bytes"):
        wire.decode(skeleton, [bytearray(sizes[0] - 4)])


def test_pieces_cover_a_buffer_in_order():
    data = bytearray(range(256)) * 10
    pieces = wire.chunks(data, size=1000)
    assert [len(p) for p in pieces] == [1000, 1000, 560] and b"".join(pieces) == bytes(data)


def test_skeleton_is_a_plain_pickle_of_the_rest():
    header, buffers = wire.encode({"round": 3, "note": "x"})
    sizes, skeleton = wire.parse_header(header, 1 << 20)
    assert sizes == [] and pickle.loads(skeleton) == {"round": 3, "note": "x"}


@pytest.mark.mpi
def test_over_real_mpi_in_pieces_and_forged_headers_refused(workdir):
    cwd, home, marker = workdir
    job = run_job([mpiexec(), "-n", "2", sys.executable, str(TESTS_DIR / "support" / "wire_peer.py"), marker],
                  cwd, mpi_support.test_env(home), deadline_s=120, marker=marker)
    assert job.returncode == 0, job.output
    assert "intact" in job.stdout
    assert "sent in flight: 6 messages in order, intact" in job.stdout, job.output
    refusals = [line for line in job.stdout.splitlines() if line.startswith("refused: ")]
    assert len(refusals) == 3, job.output
    assert "1152921504606846976 bytes, more than this host can hold" in refusals[0]
    assert "announcing 1073741824 buffers" in refusals[1]
    assert "does not start with" in refusals[2]
    assert job.leftovers == []


@pytest.mark.mpi
@pytest.mark.heavy  # a model over 2 GiB in three ranks' memory: python -m pytest -m heavy
def test_a_model_over_2_gib_trains_with_two_clients(workdir):
    cwd, home, marker = workdir
    out = cwd / "out"
    model_bytes = 2_200_000_000  # over 2**31 - 1, MPI's count limit
    job = run_mpi(3, ["--cf", str(DEFAULT_CONFIG), "--run_id", marker, "--set", f"common_args.output_dir={out}",
                      "--set", "data_args.dataset=support.heavy_model_dataset", "--set", "train_args.num_updates=1",
                      "--set", "train_args.comm_round=2", "--set", "common_args.checkpoint_every=0",
                      "--set", "tracking_args.tensorboard=false"],
                  cwd, home, deadline_s=1200, env_extra={"HEAVY_MODEL_BYTES": str(model_bytes)}, marker=marker)
    assert job.returncode == 0, job.output
    results = json.loads((out / "results.json").read_text())
    assert results["rounds_completed"] == 2
    state = torch.load(out / "global_model.pt")
    assert state["ballast"].numel() * 4 == model_bytes and not state["ballast"].any()
    for centre in results["traffic"]["per_centre"].values():  # three exchanges each way, each over 2 GiB
        assert centre["bytes_received"] > 3 * model_bytes and centre["bytes_sent"] > 2 * model_bytes
    assert job.leftovers == []


def test_pool_reuses_a_buffer_only_once_nothing_refers_to_it():
    pool = wire.BufferPool()
    first = pool.allocate([400000])
    kept = wire.decode(*_skeleton_and(first))
    address = first[0].ctypes.data
    del first
    second = pool.allocate([400000])  # `kept` still views the first buffer: a new one
    assert second[0].ctypes.data != address
    second_address = second[0].ctypes.data
    del kept, second
    third = pool.allocate([400000])  # now free again: reused, no new page faults
    assert third[0].ctypes.data in {address, second_address} and len(pool._buffers) == 2
    del third
    assert len(pool.allocate([8000000])) == 1 and len(pool._buffers) == 1  # other sizes dropped


def _skeleton_and(buffers):
    header, _ = wire.encode({"w": torch.zeros(100000)})
    return wire.parse_header(header, 1 << 30)[1], buffers
