"""Both ends of flamby_mpi.transport.wire over real MPI (`mpiexec -n 2`): rank 0 sends, rank 1 receives and
checks. Messages are cut into 1000-byte pieces here so the path of messages over 2 GiB (several
MPI messages per buffer) runs in a test of seconds. Then rank 0 attacks with forged headers."""
import struct
import sys

import numpy as np
import torch
from mpi4py import MPI

from flamby_mpi.transport import wire

wire.CHUNK_BYTES = 1000
comm = MPI.COMM_WORLD
torch.manual_seed(0)
message = {"state": {"w": torch.randn(70000), "b": torch.randn(3), "i": torch.arange(40000)},
           "predictions": np.linspace(0, 1, 20000), "round": 7}


def forged(count, sizes, skeleton=b""):
    return struct.pack("<4sI", wire.MAGIC, count) + b"".join(struct.pack("<Q", s) for s in sizes) + skeleton


def next_message():
    status = MPI.Status()
    comm.Probe(source=0, tag=wire.HEAD_TAG, status=status)
    return wire.receive(comm, 0, status.Get_count(MPI.BYTE))


if comm.rank == 0:
    sent = wire.send(comm, message, 1)
    comm.send(sent, dest=1, tag=1)
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
    for _ in range(3):
        try:
            next_message()
        except wire.WireError as error:
            print(f"refused: {error}", flush=True)
    comm.Barrier()
sys.exit(0)
