"""Unit tests of the start-up memory check (flamby_mpi.runtime.memory_fit): the decision as a pure
function of (hosts -> processes and their readings, the estimate), the estimates file the check
writes and the run reads, the built-in figures, and the start-up hook with a fake transport and a
faked GPU (no GPU here). The real mpiexec runs are in tests/test_memory_fit_mpi.py."""
import json
import types

import pytest
import torch

from flamby_mpi.config import build_config
from flamby_mpi.launch import World
from flamby_mpi.runtime import devices, memory_fit
from flamby_mpi.runtime.memory_fit import (
    CUDA_CONTEXT_BYTES,
    GIB,
    MIB,
    MPI_AND_FEDML_BYTES,
    Estimate,
    ProcessState,
    decide,
)

EST = Estimate(client_bytes=2 * GIB, imports_bytes=300 * MIB, shared_bytes=250 * MIB, model_bytes=10 * MIB,
               gpu_bytes=3 * GIB, source="a test figure")


def _host(name, ranks, available, held=300 * MIB, **gpu):
    """One process per rank on host `name`, each reading `available`."""
    return [ProcessState((r,), name, available, held, **gpu) for r in ranks]


def _need(ranks, clients=4, estimate=EST, held=0):
    return estimate.host_bytes([(r,) for r in ranks], clients, held)


def test_the_per_rank_figures():
    # A client: its private peak, the message it received, MPI and FedML.
    assert EST.rank_bytes(1, 4) == 2 * GIB + 10 * MIB + MPI_AND_FEDML_BYTES
    # The server: its imports and the model times (clients + 2).
    assert EST.rank_bytes(0, 4) == 300 * MIB + 6 * 10 * MIB + MPI_AND_FEDML_BYTES
    # A host: the ranks' private parts, the libraries once, plus the margin.
    assert _need([0, 1, 2]) == pytest.approx(
        (EST.rank_bytes(0, 4) + 2 * EST.rank_bytes(1, 4) + 250 * MIB) * 1.1, abs=1)


def test_a_job_that_fits_is_not_refused():
    held = 300 * MIB
    states = _host("node1", range(5), available=_need(range(5)) - 5 * held, held=held)
    verdict = decide(states, EST, 4)
    assert verdict.fits and verdict.notes == []


def test_a_host_one_byte_short_is_refused_with_the_numbers():
    held = 300 * MIB
    available = _need(range(5), held=5 * held) - 5 * held - 1
    verdict = decide(_host("node1", range(5), available, held), EST, 4)
    assert not verdict.fits
    text = verdict.refusal
    assert text.startswith("the job does not fit in memory: host node1 runs ranks 0, 1, 2, 3, 4, which need about")
    assert "the server 392 MiB + 4 client(s) 2.0 GiB each + libraries 250 MiB once" in text
    assert "plus 10% of what they do not hold yet" in text
    assert "MemAvailable" in text and "the job's processes there hold already" in text
    assert "Estimate per rank: server 392 MiB, client 2.0 GiB" in text
    assert "from a test figure" in text
    hint = text.split("\nHINT: ")[1]
    for advice in ("fewer ranks per host", "host file", "data_args.centers", "train_args.batch_size",
                   "more hosts", "--set device_args.memory_check=false"):
        assert advice in hint


def test_only_the_host_that_does_not_fit_is_named():
    # ranks 0-2 on node1 (plenty), 3-4 on node2 (too little for two clients).
    states = _host("node1", [0, 1, 2], 64 * GIB) + _host("node2", [3, 4], 3 * GIB)
    verdict = decide(states, EST, 4)
    assert "host node2 runs ranks 3, 4" in verdict.refusal
    assert "node1" not in verdict.refusal
    assert "the server" not in verdict.refusal.split(". Estimate")[0]  # node2 holds no server
    # The same ranks spread one per host fit: fewer ranks per host is the cure the message names.
    spread = [ProcessState((r,), f"node{r}", 3 * GIB, 300 * MIB) for r in range(5)]
    assert decide(spread, EST, 4).fits


def test_the_margin_is_on_what_the_ranks_will_still_take_not_on_what_they_hold():
    """What a process holds at the check is measured; only its growth is estimated. 64 clients whose
    imports are most of their peak must not be refused for a 10% margin on memory they already hold."""
    tiny = Estimate(client_bytes=300 * MIB, imports_bytes=280 * MIB, shared_bytes=256 * MIB, model_bytes=MIB,
                    gpu_bytes=0, source="a test figure")
    held = 280 * MIB
    whole = tiny.host_bytes([(r,) for r in range(65)], 64)  # nothing held: 10% on all of it
    growth = whole - tiny.host_bytes([(r,) for r in range(65)], 64, 65 * held)
    assert growth > 65 * 25 * MIB  # the margin on 65 x 280 MiB held
    room = whole - growth // 2
    assert decide(_host("n", range(65), room - 65 * held, held), tiny, 64).fits
    assert not decide(_host("n", range(65), room - 65 * held, 0), tiny, 64).fits


def test_what_the_job_holds_already_counts_as_room():
    """MemAvailable is read after the ranks have imported torch: what they hold is theirs to use."""
    need = _need(range(3), clients=2)
    assert not decide(_host("n", range(3), need - 1, held=0), EST, 2).fits
    assert decide(_host("n", range(3), need - 3 * GIB, held=GIB), EST, 2).fits


def test_the_smallest_reading_of_a_host_is_taken():
    need = _need(range(3), clients=2)
    states = [ProcessState((0,), "n", 10 * need, 0), ProcessState((1,), "n", need - 1, 0),
              ProcessState((2,), "n", 10 * need, 0)]
    assert not decide(states, EST, 2).fits


def test_one_process_playing_every_rank_holds_its_imports_once():
    """The in-process backend: one process, ranks 0..4."""
    one = [ProcessState(tuple(range(5)), "n", 0, 0)]
    need = EST.process_bytes(tuple(range(5)), 4)
    assert need == EST.rank_bytes(0, 4) + 4 * (EST.rank_bytes(1, 4) - 300 * MIB - MPI_AND_FEDML_BYTES)
    assert need < sum(EST.rank_bytes(r, 4) for r in range(5))
    refusal = decide(one, EST, 4).refusal
    assert "one process: the imports counted once" in refusal
    room = EST.host_bytes([tuple(range(5))], 4)
    assert decide([ProcessState(tuple(range(5)), "n", room, 0)], EST, 4).fits


def test_a_host_without_meminfo_is_noted_not_refused():
    verdict = decide(_host("mac", range(3), None), EST, 2)
    assert verdict.fits and verdict.notes == ["host mac: available memory unknown (no /proc/meminfo); not checked"]


def test_clients_sharing_a_gpu_are_summed_against_its_free_memory():
    per_client = EST.gpu_bytes + CUDA_CONTEXT_BYTES
    plenty = 1024 * GIB
    gpu = dict(gpu="GPU-aaaa", gpu_name="cuda:0")
    # Two clients on one GPU that holds only what one of them needs.
    states = _host("g1", [0], plenty) + _host("g1", [1, 2], plenty, gpu_free_bytes=int(per_client * 1.5), **gpu)
    refusal = decide(states, EST, 2).refusal
    assert "GPU cuda:0 of host g1 trains ranks 1, 2, which need about 7.7 GiB of GPU memory" in refusal
    assert "3.0 GiB each + 512 MiB for its CUDA context" in refusal
    assert "(GPU 3.0 GiB)" in refusal and "fewer client ranks per GPU" in refusal
    # Enough free memory for both: fits.
    roomy = _host("g1", [0], plenty) + _host("g1", [1, 2], plenty, gpu_free_bytes=3 * per_client, **gpu)
    assert decide(roomy, EST, 2).fits
    # Each task sees its own GPU as cuda:0 (CUDA_VISIBLE_DEVICES per task): different GPUs, not summed.
    own = _host("g1", [0], plenty) + [
        ProcessState((r,), "g1", plenty, 0, gpu=f"GPU-{r}", gpu_name="cuda:0", gpu_free_bytes=int(per_client * 1.5))
        for r in (1, 2)]
    assert decide(own, EST, 2).fits
    # The same GPU id on two hosts is two GPUs.
    two_hosts = _host("g1", [0], plenty) + _host("g1", [1], plenty, gpu_free_bytes=int(per_client * 1.5), **gpu) \
        + _host("g2", [2], plenty, gpu_free_bytes=int(per_client * 1.5), **gpu)
    assert decide(two_hosts, EST, 2).fits


# ---- the estimates file, the built-in figures ---------------------------------------------------

def _plan(batch_size=None, dataset="synthetic"):
    sections = {"data_args": {"dataset": dataset}}
    if batch_size:
        sections["train_args"] = {"batch_size": batch_size}
    from flamby_mpi.plan import make_plan

    return make_plan(build_config(sections))


def test_the_check_s_record_is_what_the_run_finds(tmp_path):
    path = tmp_path / "cache" / "estimates.json"
    plan = _plan()
    memory_fit.record_estimate(path, memory_fit.estimate_key(plan), EST, centre=0)
    found, note = memory_fit.find_estimate(plan, str(path))
    assert note is None
    assert (found.client_bytes, found.imports_bytes, found.shared_bytes, found.model_bytes, found.gpu_bytes) == \
        (EST.client_bytes, EST.imports_bytes, EST.shared_bytes, EST.model_bytes, EST.gpu_bytes)
    assert "python -m flamby_mpi check of" in found.source and str(path) in found.source
    # Another batch size is another key: that run gets the built-in figure, scaled.
    other, _ = memory_fit.find_estimate(_plan(batch_size=64), str(path))
    assert "built-in figure for synthetic" in other.source
    # A second record keeps the first.
    memory_fit.record_estimate(path, "other|key", EST)
    assert set(json.loads(path.read_text())["estimates"]) == {memory_fit.estimate_key(plan), "other|key"}


def test_the_default_file_is_the_user_s_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert memory_fit.estimates_file(None) == tmp_path / "xdg" / "flamby-mpi" / "memory_estimates.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert memory_fit.estimates_file(None) == tmp_path / "home" / ".cache" / "flamby-mpi" / "memory_estimates.json"
    assert memory_fit.estimates_file("~/e.json") == tmp_path / "home" / "e.json"


@pytest.mark.parametrize("content", [b"{not json", b'{"format": "other", "estimates": {}}', b"[1, 2]",
                                     b"[" * 100 + b"]" * 100])
def test_a_broken_estimates_file_is_ignored_with_a_note(tmp_path, content):
    path = tmp_path / "estimates.json"
    path.write_bytes(content)
    found, note = memory_fit.find_estimate(_plan(), str(path))
    assert "built-in figure" in found.source
    assert str(path) in note and "ignored" in note


def test_hostile_entries_and_files_are_not_believed(tmp_path):
    plan = _plan()
    path = tmp_path / "estimates.json"
    for entry in ({"client_bytes": -1}, {**{k: 1 for k in memory_fit._FIELDS}, "client_bytes": True},
                  {**{k: 1 for k in memory_fit._FIELDS}, "gpu_bytes": 2**70}, "text"):
        path.write_text(json.dumps({"format": memory_fit.ESTIMATES_FORMAT,
                                    "estimates": {memory_fit.estimate_key(plan): entry}}))
        found, _ = memory_fit.find_estimate(plan, str(path))
        assert "built-in figure" in found.source, entry
    link = tmp_path / "link.json"
    link.symlink_to(path)
    found, note = memory_fit.find_estimate(plan, str(link))
    assert "built-in" in found.source and "link" in note
    path.write_bytes(b" " * (memory_fit.ESTIMATES_FILE_CAP + 1))
    assert "ignored" in memory_fit.find_estimate(plan, str(path))[1]


def test_every_flamby_dataset_has_a_built_in_figure():
    from flamby_mpi.registry import FLAMBY_DATASETS

    assert set(memory_fit.BUILTIN_MIB) == set(FLAMBY_DATASETS) | {"synthetic"}
    for name, (_batch, client, imports, shared, model, gpu, step) in memory_fit.BUILTIN_MIB.items():
        assert 0 < imports <= client and 0 < shared and 0 < model <= gpu and 0 <= step <= client, name


def test_the_built_in_step_scales_with_the_batch():
    name = "fed_isic2019"
    batch, client, _, _, model, gpu, step = memory_fit.BUILTIN_MIB[name]
    same = memory_fit.builtin_estimate(name, batch)
    double = memory_fit.builtin_estimate(name, 2 * batch)
    small = memory_fit.builtin_estimate(name, batch // 16)  # the stand-in tests' batch of 4
    assert same.client_bytes == client * MIB and same.gpu_bytes == gpu * MIB and "scaled" not in same.source
    assert double.client_bytes == (client + step) * MIB and double.gpu_bytes == 2 * gpu * MIB
    assert "scaled to batch size 128" in double.source
    assert small.client_bytes == int((client - step * 15 / 16) * MIB)
    assert small.client_bytes > small.imports_bytes
    # On a GPU never below the parameters, gradients and two optimizer moments.
    assert memory_fit.builtin_estimate(name, 1).gpu_bytes == max(gpu / 64, 4 * model) * MIB
    assert memory_fit.builtin_estimate("my_own_silos", 4) is None


# ---- what a process reads, and the start-up hook -------------------------------------------------

def test_this_process_s_readings(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemAvailable:    512 kB\n")
    assert memory_fit.mem_available_bytes(str(meminfo)) == 512 * 1024
    assert memory_fit.mem_available_bytes(str(tmp_path / "none")) is None
    state = memory_fit.process_state([1], "h")
    assert state.available_bytes > 0 and 0 < state.held_bytes and state.gpu is None
    assert memory_fit.from_record(memory_fit.as_record(state)) == state


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two visible GPUs with `free` bytes free each (set the list's items), as CUDA would say."""
    free = [0, 0]
    monkeypatch.setattr(devices, "visible_gpu_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (free[index], 80 * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: types.SimpleNamespace(uuid=f"GPU-{index}"))
    return free


def test_gpu_reading_with_a_faked_gpu(fake_gpus):
    fake_gpus[1] = 5 * GIB
    assert memory_fit.gpu_reading(torch.device("cuda:1")) == ("GPU-1", "cuda:1", 5 * GIB)
    assert memory_fit.gpu_reading(torch.device("cpu")) == (None, "", None)


class FakeTransport:
    """Rank `rank` of a job on one host whose other processes report `others` (records)."""

    def __init__(self, rank, world_size, others, host="node1"):
        self.rank, self.world_size, self.host, self.local_ranks = rank, world_size, host, [rank]
        self.others, self.agreed = others, []
        self.world = World(None, rank, world_size, host, rank)

    def allgather(self, value):
        return [value, *self.others]

    def agree(self, value):
        self.agreed.append(value)
        return value

    def device(self, plan, warn):
        return devices.pick_device(plan.devices, self.world, warn)


def _gpu_plan(tmp_path, gpu_bytes, **device_args):
    """A synthetic plan on GPUs whose estimates file says each client needs gpu_bytes on its GPU."""
    path = tmp_path / "estimates.json"
    config = build_config({"device_args": {"using_gpu": True, "memory_estimates_file": str(path), **device_args},
                           "data_args": {"synthetic_num_centers": 4}})
    from flamby_mpi.plan import make_plan

    plan = make_plan(config)
    small = Estimate(client_bytes=MIB, imports_bytes=MIB, shared_bytes=MIB, model_bytes=1, gpu_bytes=gpu_bytes)
    memory_fit.record_estimate(path, memory_fit.estimate_key(plan), small)
    return plan


def test_the_hook_counts_gpu_memory_of_clients_placed_on_one_gpu(tmp_path, fake_gpus, capsys):
    """Round-robin on 2 faked GPUs: clients (local ranks) 1 and 3 share cuda:1, 2 and 4 cuda:0. Rank 0
    decides from every process's reading: cuda:1's free memory holds one client, not two."""
    per_client = GIB + CUDA_CONTEXT_BYTES
    fake_gpus[0], fake_gpus[1] = 3 * per_client, int(1.5 * per_client)
    plan = _gpu_plan(tmp_path, GIB)
    records = []
    for rank in range(1, 5):  # each client's own reading through the hook's code
        device = devices.pick_device(plan.devices, World(None, rank, 5, "node1", rank), pytest.fail)
        records.append(memory_fit.as_record(memory_fit.process_state([rank], "node1", device)))
    assert [r["gpu_name"] for r in records] == ["cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    server = FakeTransport(0, 5, records)
    assert memory_fit.at_startup(plan, server, pytest.fail) == 2
    err = capsys.readouterr().err
    assert "flamby-mpi: error on every rank: the job does not fit in memory: GPU cuda:1 of host node1 " \
           "trains ranks 1, 3" in err
    assert "cuda:0" not in err.split("HINT")[0]  # cuda:0 holds its two clients
    # A client hears the verdict from rank 0 and exits 2 too, saying nothing itself.
    client = FakeTransport(1, 5, [])
    client.agree = lambda value: server.agreed[-1]
    assert memory_fit.at_startup(plan, client, pytest.fail) == 2
    assert capsys.readouterr().err == ""
    # Enough on cuda:1 too: the job starts.
    fake_gpus[1] = 3 * per_client
    records[0] = memory_fit.as_record(memory_fit.process_state([1], "node1", torch.device("cuda:1")))
    records[2] = memory_fit.as_record(memory_fit.process_state([3], "node1", torch.device("cuda:1")))
    assert memory_fit.at_startup(plan, FakeTransport(0, 5, records), pytest.fail) == 0


def test_the_hook_is_off_with_memory_check_false(tmp_path, fake_gpus):
    plan = _gpu_plan(tmp_path, 1000 * GIB, memory_check=False)
    transport = FakeTransport(0, 5, [])
    transport.allgather = transport.agree = pytest.fail  # no collective at all
    assert memory_fit.at_startup(plan, transport, pytest.fail) == 0


def test_memory_keys_do_not_block_a_resume():
    """A job refused for memory is resumed with device_args.memory_check=false: not a result change."""
    from flamby_mpi.plan import make_plan

    before = make_plan(build_config({}))
    after = make_plan(build_config({"device_args": {"memory_check": False, "memory_estimates_file": "/x.json"}}))
    assert after.result_changing_differences(before.config_record()) == []


def test_a_batch_larger_than_any_synthetic_centre_is_estimated_at_the_largest_centre(tmp_path):
    """A loader never forms a batch larger than its centre: batch_size 10**9 on synthetic (accepted,
    and it runs) must be estimated as the largest centre's batch, not scaled to 10**9."""
    huge = _plan(batch_size=10**9)
    assert huge.largest_batch < 1000
    estimate, _ = memory_fit.find_estimate(huge, str(tmp_path / "no-estimates.json"))
    at_largest = memory_fit.builtin_estimate("synthetic", huge.largest_batch)
    assert estimate.client_bytes == at_largest.client_bytes < 2 * memory_fit.GIB
