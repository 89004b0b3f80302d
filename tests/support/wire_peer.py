"""Both ends of flamby_mpi.transport.wire over real MPI (`mpiexec -n 2`): rank 0 sends, rank 1 receives and
checks. Messages are cut into 1000-byte pieces here so the path of messages over 2 GiB (several
MPI messages per buffer) runs in a test of seconds. Then rank 0 sends three messages without
waiting (wire.SendsInFlight), which must arrive in order and intact: in 1000-byte pieces, then as
4 MB buffers that MPI cannot send eagerly, made for the send and let go at once (only what
SendsInFlight holds, the requests and the buffers, keeps them alive while other 4 MB tensors are
allocated and filled), completed by test() alone, as the bridge's receive thread does. Then
rank 0 attacks with forged headers."""
import struct
import sys
import time
import traceback

import numpy as np
import torch
from mpi4py import MPI

from flamby_mpi.transport import wire

wire.CHUNK_BYTES = 1000
comm = MPI.COMM_WORLD


def _abort(*failure):  # a failed check on one rank ends the job at once, not at the test's deadline
    traceback.print_exception(*failure)
    sys.stderr.flush()
    comm.Abort(1)


sys.excepthook = _abort
torch.manual_seed(0)
message = {"state": {"w": torch.randn(70000), "b": torch.randn(3), "i": torch.arange(40000)},
           "predictions": np.linspace(0, 1, 20000), "round": 7}


def forged(count, sizes, skeleton=b""):
    return struct.pack("<4sI", wire.MAGIC, count) + b"".join(struct.pack("<Q", s) for s in sizes) + skeleton


def next_message():
    status = MPI.Status()
    comm.Probe(source=0, tag=wire.HEAD_TAG, status=status)
    return wire.receive(comm, 0, status.Get_count(MPI.BYTE))


in_flight = [{"n": n, "w": torch.full((50000,), float(n)), "p": np.full(30000, n)} for n in range(3)]
BIG = 1_000_000  # float32: 4 MB


if comm.rank == 0:
    sent = wire.send(comm, message, 1)
    comm.send(sent, dest=1, tag=1)
    sends = wire.SendsInFlight()
    for outgoing in in_flight:
        wire.send(comm, outgoing, 1, sends)
    assert len(sends) == 3 * (200 + 240)  # the buffers' pieces of 1000 bytes, none waited for yet
    sends.complete()
    assert len(sends) == 0
    wire.CHUNK_BYTES, small_pieces = 1 << 30, wire.CHUNK_BYTES
    litter = []
    for n in range(3):
        wire.send(comm, {"n": n, "big": torch.full((BIG,), float(n))}, 1, sends)
        litter.append(torch.full((BIG,), -1.0))  # where a buffer let go too early would be reused
    assert len(sends) == 3
    deadline = time.monotonic() + 60
    while not sends.test():  # what the bridge's receive thread does as it probes: moves them, never waits
        assert time.monotonic() < deadline, "sends in flight never completed by test()"
        time.sleep(0.001)
    assert len(sends) == 0
    wire.CHUNK_BYTES = small_pieces
    comm.Send([forged(1, [1 << 60]), MPI.BYTE], dest=1, tag=wire.HEAD_TAG)  # an exabyte
    comm.Send([forged(1 << 30, []), MPI.BYTE], dest=1, tag=wire.HEAD_TAG)  # more buffers than bytes
    comm.Send([b"GARBAGE!", MPI.BYTE], dest=1, tag=wire.HEAD_TAG)
    comm.Barrier()
else:
    received, size = next_message()
    assert size == comm.recv(source=0, tag=1)
    for key, tensor in message["state"].items():
        assert torch.equal(received["state"][key], tensor) and received["state"][key].dtype == tensor.dtype
    assert np.array_equal(received["predictions"], message["predictions"]) and received["round"] == 7
    print(f"received {size} bytes intact", flush=True)
    for expected in in_flight:
        got, _ = next_message()
        assert got["n"] == expected["n"] and torch.equal(got["w"], expected["w"]), (got["n"], expected["n"])
        assert np.array_equal(got["p"], expected["p"])
    wire.CHUNK_BYTES, small_pieces = 1 << 30, wire.CHUNK_BYTES  # as the sender's, for these three
    for n in range(3):
        got, _ = next_message()
        assert got["n"] == n and torch.equal(got["big"], torch.full((BIG,), float(n))), got["n"]
    wire.CHUNK_BYTES = small_pieces
    print("sent in flight: 6 messages in order, intact", flush=True)
    for _ in range(3):
        try:
            next_message()
        except wire.WireError as error:
            print(f"refused: {error}", flush=True)
    comm.Barrier()
sys.exit(0)
