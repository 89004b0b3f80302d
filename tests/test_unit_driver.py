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
