"""Unit tests of flamby_mpi.launch.world: size and rank/role checks with a fake world (no MPI), and
the collectives' wait in a real mpiexec job."""
import json
import sys
import textwrap

import pytest

from flamby_mpi.exit.errors import UserError, WorldSizeError
from flamby_mpi.launch import CLIENT, SERVER, World, check_world, role_of
from flamby_mpi.launch.world import form_world, local_rank_from_hosts, singleton_world
from support.mpi import mpiexec, run_job
from support.mpi import test_env as job_env


def _world(rank, size):
    return World(comm=None, rank=rank, size=size, host="h", local_rank=rank)


def test_roles():
    assert role_of(0) == SERVER == "server"
    assert role_of(1) == role_of(4) == CLIENT == "client"
    assert _world(0, 5).is_server and _world(0, 5).role == "server"
    assert not _world(3, 5).is_server and _world(3, 5).role == "client"


@pytest.mark.parametrize("size", [2, 3, 4, 6, 9])
def test_size_mismatch(size):
    with pytest.raises(WorldSizeError) as info:
        check_world(_world(0, size), 5, "synthetic", None, None)
    err = info.value
    assert err.hint == "use mpirun -np 5"
    assert f"{size} MPI processes were started, but synthetic has 4 centres" in str(err)
    assert "1 server + 4 clients = 5 processes" in str(err)
    assert err.exit_code == 2


def test_single_process():
    with pytest.raises(WorldSizeError) as info:
        check_world(_world(0, 1), 5, "fed_heart_disease", None, None)
    assert "only 1 MPI process is running, but fed_heart_disease needs 5" in str(info.value)
    assert "mpirun -np 5" in info.value.hint


def test_single_process_with_rank_and_role_is_one_process_per_terminal():
    # Accepted: the ranks then meet through the rendezvous (launch/separate.py).
    check_world(_world(0, 1), 5, "synthetic", 0, "server")
    check_world(_world(0, 1), 5, "synthetic", 4, "client")


def test_single_process_rank_out_of_range_for_the_dataset():
    with pytest.raises(UserError) as info:
        check_world(_world(0, 1), 5, "synthetic", 5, "client")
    assert "--rank 5 is out of range" in str(info.value)
    assert "1..4" in str(info.value) and "--rank 0..4" in info.value.hint


def test_rank_disagreeing_with_mpi_is_a_rank_mismatch_error():
    from flamby_mpi.exit.errors import RankMismatchError

    with pytest.raises(RankMismatchError):
        check_world(_world(1, 5), 5, "synthetic", 2, "client")


@pytest.mark.parametrize("rank, role", [(1, None), (None, "client")])
def test_rank_and_role_go_together(rank, role):
    with pytest.raises(UserError, match="--rank and --role go together") as info:
        check_world(_world(1, 5), 5, "synthetic", rank, role)
    assert not isinstance(info.value, WorldSizeError)


@pytest.mark.parametrize("rank, role, fix", [(0, "client", "--role server"), (2, "server", "--role client")])
def test_rank_role_mismatch(rank, role, fix):
    with pytest.raises(UserError) as info:
        check_world(_world(rank, 5), 5, "synthetic", rank, role)
    assert not isinstance(info.value, WorldSizeError)
    assert f"--rank {rank} --role {role}" in str(info.value)
    assert info.value.hint == f"use --rank {rank} {fix}"


def test_cli_rank_disagrees_with_mpi_rank():
    with pytest.raises(UserError) as info:
        check_world(_world(1, 5), 5, "synthetic", 2, "client")
    assert not isinstance(info.value, WorldSizeError)
    assert "--rank 2 disagrees with the MPI rank 1" in str(info.value)


@pytest.mark.parametrize("rank", range(5))
def test_matching_world_passes(rank):
    assert check_world(_world(rank, 5), 5, "synthetic", None, None) is None
    assert check_world(_world(rank, 5), 5, "synthetic", rank, role_of(rank)) is None


def test_one_client_world_of_two():
    assert check_world(_world(1, 2), 2, "synthetic", None, None) is None


# Local ranks: counted from every rank's host name, in rank order.
TWO_HOSTS = ["node1", "node1", "node1", "node2", "node2"]  # mpirun -np 5 with slots 3 + 2


@pytest.mark.parametrize("hosts, expected", [
    (["vm"] * 5, [0, 1, 2, 3, 4]),
    (TWO_HOSTS, [0, 1, 2, 0, 1]),
    # Round-robin placement (mpirun --map-by node): neighbours in rank order are on other hosts.
    (["a", "b", "a", "b", "a"], [0, 0, 1, 1, 2]),
    # Separately started ranks, one per host: each is alone there, whatever its rank.
    (["s", "c1", "c2", "c3", "c4"], [0, 0, 0, 0, 0]),
    (["solo"], [0]),
])
def test_local_rank_from_hosts(hosts, expected):
    assert [local_rank_from_hosts(hosts, rank) for rank in range(len(hosts))] == expected


class FakeComm:
    """What form_world asks of a communicator: its rank and size, a non-blocking barrier, an allgather."""

    def __init__(self, rank, hosts):
        self.rank, self.hosts = rank, hosts

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return len(self.hosts)

    def allgather(self, value):
        assert value == self.hosts[self.rank]
        return list(self.hosts)

    def Ibarrier(self):  # every rank is there already
        return type("Done", (), {"Test": lambda self: True})()


def test_form_world_gathers_the_hosts_once(monkeypatch):
    import flamby_mpi.launch.world as world_module

    for rank, local in ((3, 0), (4, 1), (2, 2)):
        monkeypatch.setattr(world_module.socket, "gethostname", lambda rank=rank: TWO_HOSTS[rank])
        cleanup = object()
        world = form_world(FakeComm(rank, TWO_HOSTS), cleanups=[cleanup], joined_separately=True)
        assert (world.rank, world.size, world.host, world.local_rank) == (rank, 5, TWO_HOSTS[rank], local)
        assert world.cleanups == [cleanup] and world.joined_separately
        # The peers its sends may leave in flight (fedml_bridge): the ranks on its own host.
        assert world.ranks_on_this_host() == {r for r, host in enumerate(TWO_HOSTS) if host == TWO_HOSTS[rank]}


@pytest.mark.parametrize("hosts, rank, expected", [
    (["vm"] * 5, 0, {0, 1, 2, 3, 4}),
    (["a", "b", "a", "b", "a"], 1, {1, 3}),
    (["s", "c1", "c2", "c3", "c4"], 2, {2}),
    ((), 3, {3}),  # hosts not known (a world made by hand): itself alone, every send completed
])
def test_ranks_on_this_host(hosts, rank, expected):
    host = hosts[rank] if hosts else "vm"
    assert World(None, rank, 5, host, 0, hosts=tuple(hosts)).ranks_on_this_host() == expected


def test_the_world_of_one_process_started_by_hand():
    world = singleton_world()
    assert (world.rank, world.size, world.local_rank) == (0, 1, 0)


WAIT_FOR_ONE_LATE_RANK = textwrap.dedent("""
    import json, resource, sys, time
    from mpi4py import MPI
    from flamby_mpi.launch import world
    comm = MPI.COMM_WORLD
    collective = {"allgather": lambda: world.allgather(comm, comm.Get_rank()),
                  "bcast": lambda: world.bcast(comm, comm.Get_rank()),
                  "plain": lambda: comm.allgather(comm.Get_rank())}[sys.argv[1]]
    comm.Barrier()
    if comm.Get_rank() == 0:
        time.sleep(1.5)  # the late rank: still importing, still loading its data
    cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    before, start = cpu(), time.monotonic()
    got = collective()
    seconds, cpu_s = time.monotonic() - start, cpu() - before
    with open(f"{sys.argv[2]}/rank{comm.Get_rank()}.json", "w") as out:
        json.dump({"got": got, "seconds": seconds, "cpu_s": cpu_s}, out)
""")


@pytest.mark.mpi
@pytest.mark.parametrize("collective", ["allgather", "bcast"])
def test_ranks_waiting_for_a_late_rank_at_a_collective_sleep(collective, tmp_path):
    """MPICH's blocking collectives poll while they wait: each early rank took a fifth of a core from
    the late one (the script's `plain` case); the run's collectives wait asleep."""
    def run(kind):
        job = run_job([mpiexec(), "-n", "3", sys.executable, "-c", WAIT_FOR_ONE_LATE_RANK, kind, str(tmp_path)],
                      tmp_path, job_env(tmp_path), deadline_s=120)
        assert job.returncode == 0, job.output
        return [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(3)]

    ranks = run(collective)
    assert [r["got"] for r in ranks] == ([[0, 1, 2]] * 3 if collective == "allgather" else [0, 0, 0])
    for early in ranks[1:]:
        assert early["seconds"] > 1.0  # it did wait for rank 0
        assert early["cpu_s"] < 0.1, early  # asleep, not polling
