"""How a message travels between ranks: a small pickled skeleton, and every large tensor or array
as its own memory, never pickled.

Pickling a torch tensor (what mpi4py's `comm.send` does with FedML's Message) copies its storage
through `torch.save` into the pickle, and unpickling copies it again: a 100 MB model costs a
few copies per hop. Here the message is pickled with protocol 5 and a reducer that turns every
plain CPU tensor into a `PickleBuffer` of its bytes; buffers of `INLINE_MAX_BYTES` or more stay
out of the pickle (numpy arrays, e.g. the test predictions, do the same on their own). On the
wire a message is then:

  HEAD_TAG  one MPI message: MAGIC, the number of buffers, each buffer's size (uint64), the skeleton
  DATA_TAG  each buffer, in order, in pieces of at most CHUNK_BYTES (MPI counts are C ints)

and the receiver receives straight into buffers it keeps from round to round (BufferPool);
the tensors it unpickles are views of those buffers. Sizes come from a peer of the joined world,
which is trusted (docs/separate-terminals.md, trust model), but they are still checked before anything is allocated:
a header that does not parse, or announces more buffers or bytes than this host could hold, ends
the job with a message instead of an allocation that takes the machine down.

`encode`/`decode` are the same steps without MPI: the in-process twin uses them, so both
transports count the same bytes and hand the receiver the same objects.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import threading
from typing import List, Sequence, Tuple

import numpy as np
import torch

MAGIC = b"FLW1"
HEAD_TAG, DATA_TAG = 0x464C, 0x464D  # FedML's own manager used tag 0; these are ours alone
INLINE_MAX_BYTES = 64 * 1024  # smaller buffers stay in the skeleton: one MPI message for small models
CHUNK_BYTES = 1 << 30  # below MPI's 2**31 - 1 count limit, for messages over 2 GiB
MAX_HEADER_BYTES = CHUNK_BYTES  # the skeleton travels as one MPI message
MAX_BUFFERS = 1 << 20
CHECK_MEMORY_FROM_BYTES = 64 << 20  # smaller messages are not checked against the free memory

_COUNT = struct.Struct("<4sI")
_SIZE = struct.Struct("<Q")


class WireError(RuntimeError):
    """A message that does not parse, or announces more than this host can hold."""


def _rebuild_tensor(buffer, dtype, shape, requires_grad, parameter):
    if len(memoryview(buffer)) == 0:
        tensor = torch.empty(shape, dtype=dtype)
    else:
        flat = torch.frombuffer(buffer, dtype=torch.uint8)
        if flat.numel() != torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size():
            raise WireError(f"a tensor of shape {tuple(shape)} and {dtype} arrived with {flat.numel()} bytes")
        tensor = flat.view(dtype).reshape(shape)
    if parameter:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(requires_grad)


class _Pickler(pickle.Pickler):
    """Protocol 5, with plain CPU tensors reduced to a buffer of their bytes (no copy)."""

    def reducer_override(self, obj):
        kind = type(obj)
        if kind is not torch.Tensor and kind is not torch.nn.Parameter:
            return NotImplemented
        if (obj.device.type != "cpu" or obj.layout != torch.strided or obj.is_quantized or obj.is_conj()
                or obj.is_neg() or obj.grad_fn is not None or not obj.is_contiguous()
                or any(getattr(obj, "names", ()))):
            return NotImplemented  # rare cases: torch's own pickling, in the skeleton
        raw = obj.detach().reshape(-1).view(torch.uint8).numpy()
        return _rebuild_tensor, (pickle.PickleBuffer(raw), obj.dtype, tuple(obj.shape), obj.requires_grad,
                                 kind is torch.nn.Parameter)


def encode(obj) -> Tuple[bytes, List[memoryview]]:
    """The header (MAGIC, buffer sizes, skeleton) and the out-of-band buffers (views, not copies)."""
    buffers: List[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < INLINE_MAX_BYTES:
            return True  # in the skeleton
        buffers.append(raw)
        return False

    stream = io.BytesIO()
    _Pickler(stream, protocol=5, buffer_callback=out_of_band).dump(obj)
    skeleton = stream.getbuffer()
    header = b"".join([_COUNT.pack(MAGIC, len(buffers)), *(_SIZE.pack(b.nbytes) for b in buffers), skeleton])
    return header, buffers


def parse_header(header, limit_bytes: "int | None" = None) -> Tuple[List[int], memoryview]:
    """The buffer sizes and the skeleton of a header, checked against `limit_bytes` in all; by
    default against what this host can still allocate, for messages of CHECK_MEMORY_FROM_BYTES
    or more (reading /proc/meminfo for every small message was a tenth of a tiny round's time)."""
    view = memoryview(header)
    if len(view) < _COUNT.size:
        raise WireError(f"a message header of {len(view)} bytes, shorter than its fixed part")
    magic, count = _COUNT.unpack_from(view)
    if magic != MAGIC:
        raise WireError(f"a message that does not start with {MAGIC!r} (a peer running other code?)")
    if count > MAX_BUFFERS or _COUNT.size + count * _SIZE.size > len(view):
        raise WireError(f"a message header announcing {count} buffers in {len(view)} bytes")
    sizes = [_SIZE.unpack_from(view, _COUNT.size + i * _SIZE.size)[0] for i in range(count)]
    total = sum(sizes)
    if limit_bytes is None and total >= CHECK_MEMORY_FROM_BYTES:
        limit_bytes = available_bytes()
    if limit_bytes is not None and total > limit_bytes:
        raise WireError(f"a message announcing {total} bytes, more than this host can hold now "
                        f"({limit_bytes} bytes available)")
    return sizes, view[_COUNT.size + count * _SIZE.size:]


def decode(skeleton, buffers: Sequence) -> object:
    return pickle.loads(skeleton, buffers=buffers)


def allocate(sizes: Sequence[int]) -> list:
    """Receive buffers (numpy's allocator aligns them to 16 bytes: enough for every dtype)."""
    return [np.empty(size, dtype=np.uint8) for size in sizes]


class BufferPool:
    """Receive buffers kept from one message to the next. A fresh buffer pays its page faults
    while MPI fills it (the benchmark's exchange section, docs/benchmarks/, shows the cost), and a
    model's buffers have the same sizes every round. A buffer is reused only once nothing
    refers to it any more (every tensor unpickled from it is gone: they hold its numpy view, which
    keep a reference to it: torch.frombuffer, numpy's out-of-band arrays), so a message the
    application keeps is never overwritten. Free buffers of sizes the
    latest message did not use are dropped, so the pool holds no more than one round's messages."""

    def __init__(self):
        self._buffers: list = []

    def allocate(self, sizes: Sequence[int]) -> list:
        if not sizes:
            return []
        taken = []
        for size in sizes:
            index = self._free(size)
            if index is None:
                self._buffers.append(np.empty(size, dtype=np.uint8))
                index = len(self._buffers) - 1
            taken.append(self._buffers[index])  # one more reference: not free for the next size
        wanted = set(sizes)
        self._buffers = [self._buffers[i] for i in range(len(self._buffers))
                         if self._buffers[i].nbytes in wanted or self._free_at(i) is False]
        return taken

    def _free_at(self, index: int) -> bool:
        # References when free: the pool's list and getrefcount's argument.
        return sys.getrefcount(self._buffers[index]) <= 2

    def _free(self, size: int):
        return next((i for i in range(len(self._buffers))
                     if self._buffers[i].nbytes == size and self._free_at(i)), None)


def wire_bytes(header, buffers: Sequence) -> int:
    return len(header) + sum(memoryview(b).nbytes for b in buffers)


def available_bytes() -> int:
    """What this host can still allocate (MemAvailable), the bound on what a message may announce."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def chunks(buffer, size: "int | None" = None):
    """The buffer as byte views of at most `size` bytes each (one MPI message each); by default
    CHUNK_BYTES, read when called (tests/support/wire_peer.py lowers it)."""
    size = size or CHUNK_BYTES
    view = memoryview(buffer).cast("B")
    return [view[i:i + size] for i in range(0, len(view), size)] or [view]


def as_if_sent(obj) -> Tuple[object, int]:
    """The object as a receiver gets it (its own memory, no aliasing), and the bytes it took: the
    wire's steps without MPI, for the in-process twin."""
    header, buffers = encode(obj)
    sizes, skeleton = parse_header(header)
    received = allocate(sizes)
    for target, source in zip(received, buffers, strict=True):
        memoryview(target)[:] = source
    return decode(skeleton, received), wire_bytes(header, buffers)


class SendsInFlight:
    """Messages whose buffers MPI may still be reading: sent without waiting, completed together.

    The server sends the global model to every client in turn; waiting for each send before the
    next kept one client at a time receiving (and, in the first round, faulting in its fresh
    receive buffers) while the others idled. With the sends in flight the clients receive at the
    same time, as raw MPI's Isend to every rank does. The caller owns the contract: complete()
    before anything sent is changed or let go. The bridge completes them before its main thread
    handles the next message, which is where a rank changes its model (the server aggregates in
    place, a client loads the next global model); meanwhile its receive thread test()s them as it
    probes, which moves them along. The bridge leaves in flight only its sends to ranks on its own
    host: between hosts a large send moves only while its rank is inside MPI, and waiting for each
    was faster there (fedml_bridge._metered_comm_manager). On an error it does not wait: the job is
    ending, and a peer gone would leave the wait hanging."""

    def __init__(self):
        self._requests: list = []
        self._kept: list = []  # the buffers of the requests, alive until they complete
        self._lock = threading.Lock()  # a request is completed by one thread at a time

    def add(self, requests: list, buffers: list):
        with self._lock:
            self._requests += requests
            self._kept.append(buffers)

    def __len__(self) -> int:
        return len(self._requests)

    def complete(self):
        """Waits until every send in flight is done."""
        with self._lock:
            if self._requests:
                from mpi4py import MPI

                MPI.Request.Waitall(self._requests)
            self._requests, self._kept = [], []

    def test(self) -> bool:
        """True once nothing is in flight (what is done is let go); never waits: False while
        another thread adds or completes sends. MPI moves the sends along in the call."""
        if not self._requests:
            return True
        if not self._lock.acquire(blocking=False):
            return False
        try:
            from mpi4py import MPI

            if not self._requests or MPI.Request.Testall(self._requests):
                self._requests, self._kept = [], []
                return True
            return False
        finally:
            self._lock.release()


def send(comm, obj, dest: int, in_flight: "SendsInFlight | None" = None) -> int:
    """Sends `obj` to rank `dest` of the mpi4py communicator; the bytes that travelled. With
    in_flight, returns once the header is sent and leaves the buffers' sends to in_flight (the
    receiver gets them in the order sent: MPI does not let messages of one tag overtake)."""
    from mpi4py import MPI

    header, buffers = encode(obj)
    comm.Send([header, MPI.BYTE], dest=dest, tag=HEAD_TAG)
    if buffers:
        requests = [comm.Isend([piece, MPI.BYTE], dest=dest, tag=DATA_TAG)
                    for buffer in buffers for piece in chunks(buffer)]
        if in_flight is not None:
            in_flight.add(requests, buffers)
        else:
            MPI.Request.Waitall(requests)
    return wire_bytes(header, buffers)


def receive(comm, source: int, header_bytes: int, pool: "BufferPool | None" = None) -> Tuple[object, int]:
    """Receives the message whose header (of `header_bytes`, probed) from `source` is next, into
    buffers of `pool` when given; the object and the bytes that travelled."""
    from mpi4py import MPI

    if header_bytes > MAX_HEADER_BYTES:
        raise WireError(f"rank {source} sent a message header of {header_bytes} bytes "
                        f"(at most {MAX_HEADER_BYTES})")
    header = bytearray(header_bytes)
    comm.Recv([header, MPI.BYTE], source=source, tag=HEAD_TAG)
    try:
        sizes, skeleton = parse_header(header)
    except WireError as error:
        raise WireError(f"from rank {source}: {error}") from None
    buffers = pool.allocate(sizes) if pool is not None else allocate(sizes)
    pieces = [piece for buffer in buffers for piece in chunks(buffer)]
    statuses = [MPI.Status() for _ in pieces]
    requests = [comm.Irecv([piece, MPI.BYTE], source=source, tag=DATA_TAG) for piece in pieces]
    MPI.Request.Waitall(requests, statuses)
    for piece, status in zip(pieces, statuses, strict=True):
        if status.Get_count(MPI.BYTE) != len(piece):
            raise WireError(f"rank {source} sent {status.Get_count(MPI.BYTE)} bytes where its header "
                            f"announced {len(piece)}")
    return decode(skeleton, buffers), wire_bytes(header, buffers)
