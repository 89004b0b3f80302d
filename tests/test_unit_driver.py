"""The driver's preflight and the failure template, without MPI (a stand-in transport)."""
from flamby_mpi import driver
from flamby_mpi.config import build_config
from flamby_mpi.exit import failures
from flamby_mpi.plan import make_plan


class _Peers:
    """Rank 0 of a job whose other ranks reported `others` in the preflight's allgather."""
    rank, host, world_size, local_ranks = 0, "here", 5, []

    def __init__(self, others):
        self.others = others

    def allgather(self, mine):
        return [mine] + self.others


def _plan():
    return make_plan(build_config({"train_args": {"comm_round": 1}}))


def test_a_user_mistake_on_one_rank_is_shown_when_another_rank_hit_a_bug(capsys):
    peers = _Peers([None, (2, False, "Traceback ...\nZeroDivisionError"), (3, True, "data file /x missing"), None])
    server_run, clients, code = driver._preflight(_plan(), peers, "cpu", console=None)
    err = capsys.readouterr().err
    assert (server_run, clients, code) == (None, [], failures.EXIT_FAILURE)
    assert "flamby-mpi: error on rank 3: data file /x missing" in err
    assert "ZeroDivisionError" not in err  # rank 2 shows its own traceback, not rank 0


def test_the_same_mistake_everywhere_is_said_once(capsys):
    peers = _Peers([(k, True, "no such file") for k in range(1, 5)])
    peers.local_ranks = []
    _, _, code = driver._preflight(_plan(), peers, "cpu", console=None)
    err = capsys.readouterr().err
    assert code == failures.EXIT_USER_ERROR
    assert err.count("no such file") == 1 and "error on rank 1, 2, 3, 4: no such file" in err


def test_one_template_for_every_failure():
    assert failures.message("x", failures.where(3, "h")) == "flamby-mpi: error on rank 3 (client, host h): x"
    assert failures.message("x", failures.where(0, "h")) == "flamby-mpi: error on rank 0 (server, host h): x"
    assert failures.message("bad config") == "flamby-mpi: error: bad config"
    assert failures.fail("x", 7) == 7


def test_the_plan_is_all_downstream_code_reads():
    plan = _plan()
    assert plan.final_round == plan.rounds == 1 and plan.exchanges == 2
    assert plan.evaluates(plan.final_round) and not plan.evaluates(0)


def test_a_gpu_only_dataset_whose_clients_have_no_gpu_is_refused_before_anything_is_made(
        tmp_path, monkeypatch, capsys):
    """A run in process of Fed-Heart-Disease, marked here as FLamby's GPU-only datasets are, on a
    host without a GPU: exit 2 naming the client ranks, and no output directory (it used to be made
    first, and then refused the corrected command as an interrupted run)."""
    import torch

    from flamby_mpi import cli
    from flamby_mpi.datasets import flamby_datasets
    from support.mpi import REPO
    from support.optional import shared_or_skip
    from support.paths import SHARED_DATA

    data = SHARED_DATA / "fed_heart_disease"
    shared_or_skip(data)
    monkeypatch.setitem(flamby_datasets.NEEDS_CUDA, "fed_heart_disease", "its FLamby code calls .cuda()")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    code = cli.main(["--cf", str(REPO / "config" / "fed_heart_disease.yaml"), "--run_id", "gpu-only",
                     "--set", f"data_args.data_path={data}", "--set", "device_args.using_gpu=true",
                     "--set", "comm_args.backend=inprocess", "--set", f"common_args.output_dir={out}"])
    err = capsys.readouterr().err
    assert code == failures.EXIT_USER_ERROR, err
    assert "rank(s) 1, 2, 3, 4 have no GPU: its FLamby code calls .cuda()" in err, err
    assert err.count("have no GPU") == 1 and "Traceback" not in err, err
    assert not out.exists()
