"""Which device each rank trains on.

With `device_args.using_gpu: true` every client rank gets a GPU of its host:
- by default round-robin over the GPUs it can see, by its local rank (its index
  among the job's processes on that host, in rank order: World.local_rank,
  counted from every rank's host name whatever started the job);
- or as `device_args.gpu_mapping_file` says: FedML's gpu_mapping.yaml idea,
  `<key>: {<host>: [processes on GPU 0, processes on GPU 1, ...]}`. The counts
  cover every process of the job on that host, the server included, taken in
  local-rank order; the host `"*"` stands for every host not listed.
"The GPUs it can see" is what CUDA shows the process: CUDA_VISIBLE_DEVICES and a
scheduler's GPU binding (which sets it) are respected, and index i means the
i-th visible GPU. The server aggregates on CPU. Without a visible GPU clients
fall back to CPU, with one warning per host.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

from ..exit.errors import UserError

CPU = "cpu"
ANY_HOST = "*"


def read_gpu_mapping(path: str, key: str) -> Dict[str, List[int]]:
    """The mapping `key` of a gpu_mapping.yaml file: host -> processes per GPU."""
    import yaml

    where = f"device_args.gpu_mapping_file {path}"
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{where}: no such file",
                        hint="give the path of a YAML file such as "
                             "'mapping_default: {myhost: [2, 2]}', or remove the key")
    try:
        content = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(content, dict) or key not in content:
        keys = ", ".join(map(str, content)) if isinstance(content, dict) else "none"
        raise UserError(f"{where} has no mapping {key!r} (mappings in the file: {keys})",
                        hint="set device_args.gpu_mapping_key to one of them")
    mapping = content[key]
    problems = []
    if not isinstance(mapping, dict) or not mapping:
        problems.append(f"{key} must map host names to lists of processes per GPU")
    else:
        for host, counts in mapping.items():
            if (not isinstance(counts, list) or not counts
                    or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)):
                problems.append(f"{key}.{host}: expected a list of process counts per GPU "
                                f"(non-negative integers), got {counts!r}")
    if problems:
        raise UserError(f"{where}: " + "; ".join(problems),
                        hint="for example 'mapping_default: {node1: [3, 2], node2: [2, 2]}' puts 3 "
                             "processes on node1's GPU 0 and 2 on its GPU 1")
    return {str(host): list(counts) for host, counts in mapping.items()}


def gpu_from_mapping(mapping: Dict[str, List[int]], host: str, local_rank: int) -> int:
    """The GPU index of the local_rank-th process on host, as the mapping assigns it."""
    names = [host, host.split(".")[0], ANY_HOST]
    entry = next((name for name in names if name in mapping), None)
    if entry is None:
        raise UserError(f"the GPU mapping has no entry for host {host!r} (hosts in it: "
                        f"{', '.join(mapping)})",
                        hint=f"add '{host}: [processes on GPU 0, ...]' or a '\"*\"' entry for every other host")
    counts = mapping[entry]
    taken = 0
    for gpu, count in enumerate(counts):
        taken += count
        if local_rank < taken:
            return gpu
    raise UserError(f"the GPU mapping gives host {host!r} {taken} process(es) ({counts}), but this "
                    f"host runs at least {local_rank + 1}",
                    hint="the counts cover every process of the job on that host, the server included")


def place(*, is_server: bool, using_gpu: bool, gpu_count: int, local_rank: int, host: str,
          mapping: Optional[Dict[str, List[int]]] = None) -> str:
    """The device name ("cpu" or "cuda:<i>") for one rank; pure, for tests with any GPU count."""
    if is_server or not using_gpu or gpu_count <= 0:
        return CPU
    if mapping is None:
        return f"cuda:{local_rank % gpu_count}"
    gpu = gpu_from_mapping(mapping, host, local_rank)
    if gpu >= gpu_count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise UserError(f"the GPU mapping puts local process {local_rank} of host {host!r} on GPU "
                        f"{gpu}, but this process sees {gpu_count} GPU(s)"
                        + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""),
                        hint="list processes only for GPUs the host has; indexes count the visible GPUs")
    return f"cuda:{gpu}"


def warns_about_missing_gpu(rank: int, local_rank: int) -> bool:
    """One warning per host: from rank 1, and from the first process of each other host."""
    return rank != 0 and (rank == 1 or local_rank == 0)


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pick_device(device_args, world, warn):
    """This rank's torch device; `warn(text)` is called at most once per host when no GPU is visible."""
    import logging

    import torch

    if world.is_server or not device_args.using_gpu:
        return torch.device(CPU)
    local = world.local_rank
    gpus = visible_gpu_count()
    log = logging.getLogger("flamby_mpi.devices")
    if gpus == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        text = (f"device_args.using_gpu is true but no GPU is visible on host {world.host}"
                + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
                + ": clients there run on CPU")
        if warns_about_missing_gpu(world.rank, local):
            warn(text)
        else:
            log.info(text)
        return torch.device(CPU)
    mapping = None
    if device_args.gpu_mapping_file:
        mapping = read_gpu_mapping(device_args.gpu_mapping_file, device_args.gpu_mapping_key)
    device = place(is_server=False, using_gpu=True, gpu_count=gpus, local_rank=local,
                   host=world.host, mapping=mapping)
    log.info("rank %d (local rank %d on %s, %d visible GPU(s)) trains on %s",
             world.rank, local, world.host, gpus, device)
    return torch.device(device)
