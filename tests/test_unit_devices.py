"""Unit tests of GPU placement (flamby_mpi.runtime.devices) with a fake GPU count: no GPU, no MPI."""
import logging

import pytest
import torch

from flamby_mpi.config import build_config
from flamby_mpi.exit.errors import UserError
from flamby_mpi.launch import World
from flamby_mpi.launch.world import local_rank_from_hosts
from flamby_mpi.runtime import devices
from flamby_mpi.runtime.devices import (
    gpu_from_mapping,
    place,
    read_gpu_mapping,
    warns_about_missing_gpu,
)


def _place(local_rank, gpus, is_server=False, using_gpu=True, host="node1", mapping=None):
    return place(is_server=is_server, using_gpu=using_gpu, gpu_count=gpus, local_rank=local_rank,
                 host=host, mapping=mapping)


def test_round_robin_by_local_rank():
    # One host, 5 ranks, 2 GPUs: the server (local 0) stays on CPU, clients alternate.
    assert [_place(k, 2, is_server=(k == 0)) for k in range(5)] == \
        ["cpu", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert [_place(k, 4) for k in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    # A scheduler binding one GPU per task leaves each process one visible GPU: index 0.
    assert {_place(k, 1) for k in range(5)} == {"cuda:0"}


def test_cpu_without_gpus_or_without_using_gpu():
    assert _place(1, 0) == "cpu"
    assert _place(1, 4, using_gpu=False) == "cpu"
    assert _place(0, 4, is_server=True) == "cpu"


@pytest.fixture
def mapping_file(tmp_path):
    path = tmp_path / "gpu_mapping.yaml"
    path.write_text("mapping_default:\n  node1: [3, 2]\n  node2: [0, 2, 2]\n"
                    "mapping_small:\n  '*': [1, 1]\n")
    return path


def test_mapping_file_places_processes_per_gpu(mapping_file):
    mapping = read_gpu_mapping(str(mapping_file), "mapping_default")
    assert mapping == {"node1": [3, 2], "node2": [0, 2, 2]}
    # node1 runs the server (local 0, on CPU) and 4 clients: 3 processes on GPU 0, 2 on GPU 1.
    assert [_place(k, 2, is_server=(k == 0), mapping=mapping) for k in range(5)] == \
        ["cpu", "cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert [_place(k, 3, host="node2.cluster.org", mapping=mapping) for k in range(4)] == \
        ["cuda:1", "cuda:1", "cuda:2", "cuda:2"]
    any_host = read_gpu_mapping(str(mapping_file), "mapping_small")
    assert [_place(k, 2, host="elsewhere", mapping=any_host) for k in range(2)] == ["cuda:0", "cuda:1"]


def test_mapping_problems_are_user_errors(mapping_file, tmp_path):
    mapping = read_gpu_mapping(str(mapping_file), "mapping_default")
    with pytest.raises(UserError, match="no entry for host 'node9'"):
        gpu_from_mapping(mapping, "node9", 0)
    with pytest.raises(UserError, match=r"gives host 'node1' 5 process\(es\).*runs at least 6"):
        gpu_from_mapping(mapping, "node1", 5)
    with pytest.raises(UserError, match="sees 2 GPU"):
        _place(2, 2, host="node2", mapping=mapping)  # the mapping names GPU 2 of node2
    with pytest.raises(UserError, match="no mapping 'mapping_other'.*mapping_default, mapping_small"):
        read_gpu_mapping(str(mapping_file), "mapping_other")
    with pytest.raises(UserError, match="no such file"):
        read_gpu_mapping(str(tmp_path / "missing.yaml"), "mapping_default")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mapping_default:\n  node1: [1, -1]\n  node2: 3\n")
    with pytest.raises(UserError) as info:
        read_gpu_mapping(str(bad), "mapping_default")
    assert "mapping_default.node1" in str(info.value) and "mapping_default.node2" in str(info.value)


def test_one_warning_per_host():
    # One host of 5 ranks: only rank 1 warns.
    assert [warns_about_missing_gpu(r, r) for r in range(5)] == [False, True, False, False, False]
    # Two hosts (ranks 0-1 on the first, 2-4 on the second): rank 1 and rank 2.
    locals_ = [0, 1, 0, 1, 2]
    assert [warns_about_missing_gpu(r, locals_[r]) for r in range(5)] == [False, True, True, False, False]


def _device_args(**values):
    return build_config({"device_args": values}).device_args


def test_pick_device_falls_back_to_cpu_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(devices, "visible_gpu_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    warnings = []
    args = _device_args(using_gpu=True)
    with caplog.at_level(logging.INFO, logger="flamby_mpi.devices"):
        picked = [devices.pick_device(args, World(None, r, 5, "vm", r), warnings.append) for r in range(5)]
    assert picked == [torch.device("cpu")] * 5
    assert len(warnings) == 1
    assert "no GPU is visible on host vm (CUDA_VISIBLE_DEVICES='')" in warnings[0]


def test_pick_device_uses_the_fake_gpus(monkeypatch):
    monkeypatch.setattr(devices, "visible_gpu_count", lambda: 2)
    args = _device_args(using_gpu=True)
    picked = [str(devices.pick_device(args, World(None, r, 5, "vm", r), pytest.fail)) for r in range(5)]
    assert picked == ["cpu", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    # Ranks 3 and 4 on a second host are local ranks 0 and 1 there, whatever started them
    # (separately started ranks used to fall back to their global rank: GPUs 1 and 0).
    hosts = ["node1", "node1", "node1", "node2", "node2"]
    for rank, gpu in ((3, "cuda:0"), (4, "cuda:1")):
        world = World(None, rank, 5, hosts[rank], local_rank_from_hosts(hosts, rank))
        assert str(devices.pick_device(args, world, pytest.fail)) == gpu
    assert str(devices.pick_device(_device_args(), World(None, 1, 5, "vm", 1), pytest.fail)) == "cpu"


def test_pick_device_with_mapping_file(monkeypatch, mapping_file):
    monkeypatch.setattr(devices, "visible_gpu_count", lambda: 2)
    args = _device_args(using_gpu=True, gpu_mapping_file=str(mapping_file))
    picked = [str(devices.pick_device(args, World(None, r, 5, "node1", r), pytest.fail)) for r in range(5)]
    assert picked == ["cpu", "cuda:0", "cuda:0", "cuda:1", "cuda:1"]


def test_gpu_mapping_keys_are_config_keys():
    args = _device_args(gpu_mapping_file="m.yaml", gpu_mapping_key="mapping_x")
    assert (args.gpu_mapping_file, args.gpu_mapping_key) == ("m.yaml", "mapping_x")
    assert _device_args().gpu_mapping_key == "mapping_default"


def test_several_ranks_per_gpu_on_several_hosts(monkeypatch):
    """9 ranks over two hosts of 2 GPUs each (5 on node1 with the server, 4 on node2), round-robin by
    local rank: the server on CPU, every GPU shared by two clients, no GPU of one host used by the other's."""
    monkeypatch.setattr(devices, "visible_gpu_count", lambda: 2)
    hosts = ["node1"] * 5 + ["node2"] * 4
    args = _device_args(using_gpu=True)
    placed = [(hosts[r], str(devices.pick_device(args, World(None, r, 9, hosts[r], local_rank_from_hosts(hosts, r)),
                                                  pytest.fail))) for r in range(9)]
    assert placed[0] == ("node1", "cpu")
    per_gpu = {}
    for host, device in placed[1:]:
        per_gpu[(host, device)] = per_gpu.get((host, device), 0) + 1
    assert per_gpu == {("node1", "cuda:0"): 2, ("node1", "cuda:1"): 2, ("node2", "cuda:0"): 2, ("node2", "cuda:1"): 2}


def test_mapping_counts_pack_ranks_per_gpu_per_host(tmp_path, monkeypatch):
    """The mapping's counts: node1 puts its server and 3 clients on GPU 0 (the server stays on CPU)
    and 1 on GPU 1; node2 packs its 4 clients 3 + 1."""
    monkeypatch.setattr(devices, "visible_gpu_count", lambda: 2)
    path = tmp_path / "m.yaml"
    path.write_text("mapping_default:\n  node1: [4, 1]\n  node2: [3, 1]\n")
    hosts = ["node1"] * 5 + ["node2"] * 4
    args = _device_args(using_gpu=True, gpu_mapping_file=str(path))
    placed = [str(devices.pick_device(args, World(None, r, 9, hosts[r], local_rank_from_hosts(hosts, r)), pytest.fail))
              for r in range(9)]
    assert placed == ["cpu", "cuda:0", "cuda:0", "cuda:0", "cuda:1", "cuda:0", "cuda:0", "cuda:0", "cuda:1"]


def test_cuda_visible_devices_bounds_the_indices(tmp_path, monkeypatch):
    """With CUDA_VISIBLE_DEVICES=2,3 a process sees two GPUs, cuda:0 and cuda:1 (physical 2 and 3):
    placement only uses those indices, and a mapping naming a third is refused with the variable's value.
    (The count itself is torch's, which reads the variable: faked here, no GPU.)"""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setattr(devices, "visible_gpu_count", lambda: 2)
    args = _device_args(using_gpu=True)
    assert [str(devices.pick_device(args, World(None, r, 6, "n", r), pytest.fail)) for r in range(6)] == \
        ["cpu", "cuda:1", "cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    path = tmp_path / "m.yaml"
    path.write_text("mapping_default:\n  n: [1, 1, 1]\n")
    mapped = _device_args(using_gpu=True, gpu_mapping_file=str(path))
    with pytest.raises(UserError, match=r"sees 2 GPU\(s\) \(CUDA_VISIBLE_DEVICES=2,3\)"):
        devices.pick_device(mapped, World(None, 2, 3, "n", 2), pytest.fail)
