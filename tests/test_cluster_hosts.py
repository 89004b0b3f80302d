"""Several hosts on one machine: mpiexec/mpirun with a host file over network namespaces.

Three namespaces joined by a bridge stand for three hosts, each with its own
host name (tests/support/netns.py); a host file in the format of
mpi_host_file.example spreads 5 ranks over them (2 + 2 + 1). The run must
finish and give the same final model, bit for bit, as a single-host
`mpiexec -n 5` run with the same seed: with MPICH (`-f`), and with Open MPI
(`--hostfile`).

MPI is told to use TCP alone (UCX_TLS, FI_PROVIDER): left to itself, UCX sees one machine and
moves the messages through shared memory even between namespaces, which real hosts cannot do.
The model carries 2 MB of unused weights (tests/support/heavy_model_dataset.py), so that its
messages, not the launcher's control traffic, must be what crosses each host's interface. Each
rank's log says which peers its sends leave in flight: those on its own host, and no other
(between hosts a send moves only while its rank is inside MPI: fedml_bridge._metered_comm_manager).
"""
import csv
import hashlib
import json
import os
import re
import sys
import threading
import uuid
from collections import Counter

import pytest

from support.mpi import (
    DEFAULT_CONFIG,
    LAUNCHER,
    REPO,
    mpiexec,
    processes_matching,
    run_job,
    run_mpi,
)
from support.mpi import test_env as job_env  # aliased: pytest would collect test_env
from support.netns import NamespaceHosts
from support.openmpi import openmpi_env, openmpi_prefix

pytestmark = pytest.mark.mpi

SMALL = ["--set", "train_args.comm_round=3", "--set", "train_args.num_updates=5",
         "--set", "common_args.random_seed=11", "--set", "data_args.dataset=support.heavy_model_dataset"]
MODEL_ENV = {"HEAVY_MODEL_BYTES": "2e6", "HEAVY_MODEL_CENTRES": "4"}
TCP_ONLY = {"UCX_TLS": "tcp,self", "FI_PROVIDER": "tcp"}
# The host file's 2 + 2 + 1 slots, filled in rank order by both MPICH and Open MPI.
HOST_OF_RANK = [0, 0, 1, 1, 2]


@pytest.fixture
def hosts():
    NamespaceHosts.check_available()
    hosts = NamespaceHosts(3).start()
    yield hosts
    hosts.stop()
    assert hosts.leftovers() == []


class RankPlaces:
    """Samples which namespace each rank process runs in while the job runs."""

    def __init__(self, hosts, marker):
        self.hosts, self.marker = hosts, marker
        self.places = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(0.3):
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or int(pid) in self.places:
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as file:
                        cmdline = file.read().split(b"\0")
                except OSError:
                    continue
                if (cmdline[0].decode(errors="replace") == sys.executable
                        and self.marker.encode() in b" ".join(cmdline)):
                    host = self.hosts.namespace_of(int(pid))
                    if host:
                        self.places[int(pid)] = (host, _parent(pid))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def ranks_per_host(self) -> Counter:
        # A rank's short-lived forks (subprocess calls during imports) carry its command
        # line too: count only the processes whose parent is not a rank (Hydra's proxy is).
        return Counter(host for pid, (host, parent) in self.places.items() if parent not in self.places)


def _parent(pid) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def single_host(tmp_path_factory):
    """The reference: the same config and seed, `mpiexec -n 5` on this host."""
    root = tmp_path_factory.mktemp("single")
    home = root / "home"
    home.mkdir()
    marker = f"ref{uuid.uuid4().hex[:10]}"
    out = root / "out"
    job = run_mpi(5, ["--cf", str(DEFAULT_CONFIG), "--run_id", marker,
                      "--set", f"common_args.output_dir={out}", *SMALL],
                  root, home, deadline_s=240, env_extra=MODEL_ENV, marker=marker)
    assert job.returncode == 0, job.output
    return out


def _spread_run(hosts, launcher_cmd, workdir, env):
    """Runs launcher_cmd + launch_client.py across the hosts; checks where the ranks ran."""
    cwd, home, marker = workdir
    out = cwd / "spread"
    before = {h: hosts.bytes_through(h) for h in hosts.hosts}
    cmd = [*launcher_cmd, sys.executable, str(LAUNCHER), "--cf", str(DEFAULT_CONFIG),
           "--run_id", marker, "--set", f"common_args.output_dir={out}", *SMALL]
    with RankPlaces(hosts, marker) as places:
        job = run_job(cmd, cwd, {**env, **MODEL_ENV, **TCP_ONLY}, deadline_s=240, marker=marker)
    assert job.returncode == 0, job.output
    assert job.leftovers == []
    # Ranks really ran in the three namespaces, as the host file says: 2 + 2 + 1.
    assert places.ranks_per_host() == Counter({hosts.hosts[0]: 2, hosts.hosts[1]: 2,
                                               hosts.hosts[2]: 1}), places.places
    # ...and their MPI messages crossed the hosts' interfaces: every byte a client on another
    # host than rank 0 sent or received went through its host's and rank 0's host's.
    moved = {h: hosts.bytes_through(h) - before[h] for h in hosts.hosts}
    crossing = [0, 0, 0]
    for row in csv.DictReader((out / "rounds.csv").open()):
        rank = int(row["centre"]) + 1
        if HOST_OF_RANK[rank] != HOST_OF_RANK[0]:
            traffic = int(row["bytes_sent"]) + int(row["bytes_received"])
            crossing[HOST_OF_RANK[rank]] += traffic
            crossing[HOST_OF_RANK[0]] += traffic
    assert min(crossing[1:]) > 10_000_000, crossing  # 3 rounds of 2 MB each way: not control traffic
    assert all(moved[h] >= crossing[i] for i, h in enumerate(hosts.hosts)), (moved, crossing)
    # Each rank leaves in flight its sends to the ranks of its own host, to no other.
    for rank in range(5):
        same = [r for r in range(5) if r != rank and HOST_OF_RANK[r] == HOST_OF_RANK[rank]]
        others = [r for r in range(5) if HOST_OF_RANK[r] != HOST_OF_RANK[rank]]
        listed = [", ".join(map(str, ranks)) or "none" for ranks in (same, others)]
        assert (f"rank {rank}: its sends to the ranks on this host ({listed[0]}) leave their buffers in "
                f"flight; to the ranks on other hosts ({listed[1]})") in (out / "logs" / f"rank{rank}.log").read_text()
    return out


def _same_run(spread_out, single_out):
    assert _sha(spread_out / "global_model.pt") == _sha(single_out / "global_model.pt")
    a = json.loads((spread_out / "results.json").read_text())
    b = json.loads((single_out / "results.json").read_text())
    assert a["metrics"] == b["metrics"] and a["rounds_completed"] == b["rounds_completed"] == 3


def test_mpich_host_file_over_three_namespace_hosts_matches_a_single_host_run(hosts, single_host, workdir):
    cwd, home, marker = workdir
    host_file = hosts.host_file([2, 2, 1])
    # mpi_host_file.example's format: host:slots.
    assert host_file.read_text() == "".join(f"{h}:{n}\n" for h, n in zip(hosts.hosts, [2, 2, 1], strict=True))
    example = [line for line in (REPO / "mpi_host_file.example").read_text().splitlines()
               if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[\w.-]+:\d+", line) for line in example), example

    spread = _spread_run(hosts, [mpiexec(), *hosts.mpiexec_flags(host_file), "-n", "5"],
                         workdir, job_env(home))
    _same_run(spread, single_host)
    assert processes_matching(marker) == []


def test_open_mpi_hostfile_over_three_namespace_hosts_matches_a_single_host_run(hosts, single_host, workdir):
    prefix = openmpi_prefix()
    cwd, home, marker = workdir
    host_file = hosts.open_mpi_host_file([2, 2, 1])
    env = openmpi_env(job_env(home), prefix)
    # Open MPI forwards no environment to other hosts unless told (-x).
    forward = [arg for name in ("MPI4PY_LIBMPI", "PATH", "PYTHONPATH", "HOME", *MODEL_ENV, *TCP_ONLY)
               for arg in ("-x", name)]
    spread = _spread_run(hosts, [str(prefix / "bin" / "mpirun"), *hosts.mpirun_flags(host_file),
                                 *forward, "-np", "5"], workdir, env)
    # Open MPI's run gives MPICH's single-host model bit for bit: the arithmetic is the project's.
    _same_run(spread, single_host)
    assert processes_matching(marker) == []
