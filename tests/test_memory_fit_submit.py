"""scripts/submit.py and the memory check: the ranks per node it knows from its arguments, and the
readiness check printing what such a node needs (a real submit.py --dry-run, a real check)."""
import json
import subprocess
import sys

import pytest

from support.mpi import REPO
from support.mpi import test_env as env_for
from support.scripts import load_script

SUBMIT = REPO / "scripts" / "submit.py"


@pytest.fixture(scope="module")
def submit():
    return load_script("submit", "submit_for_memory_tests")


@pytest.mark.parametrize("scheduler, options, expected", [
    ("pbs", [], 7), ("torque", ["-l walltime=1:00:00"], 7),  # the jobs submit.py writes ask for one node
    ("slurm", [], None),  # SLURM chooses
    ("slurm", ["--ntasks-per-node=3"], 3), ("slurm", ["--ntasks-per-node=30"], 7),
    ("slurm", ["--nodes=2"], 4), ("slurm", ["-N 3"], 3), ("slurm", ["-N2"], 4), ("slurm", ["--nodes=2-4"], 4),
    ("slurm", ["--nodes=2", "--ntasks-per-node=2"], 2),  # the explicit count wins
    ("slurm", ["--nodes=x", "--ntasks-per-node=0"], None),  # sbatch's to refuse; nothing assumed here
    ("slurm", ["--time=01:00:00", "--nodelist=n1"], None),
    ("slurm", ["--nodes 2"], 4), ("slurm", ["-N", "3"], 3), ("slurm", ["--ntasks-per-node", "2"], 2),
    ("slurm", ["-N 2", "--comment=-N 7"], 4),  # a value's own text is no option
])
def test_ranks_per_node_from_the_arguments(submit, scheduler, options, expected):
    assert submit.ranks_per_node(scheduler, 7, submit.scheduler_words(options)) == expected


@pytest.mark.parametrize("options, words", [
    (["-l walltime=4:00:00"], ["-l", "walltime=4:00:00"]),
    (["-t 10", "--time  10"], ["-t", "10", "--time", "10"]),
    (["-J my job", "--comment=two words", "-t10", "--hold"], ["-J", "my job", "--comment=two words", "-t10", "--hold"]),
    ([" -t 10", "-t "], [" -t 10", "-t "]),  # not an option and its argument: the scheduler's to refuse
])
def test_an_option_and_its_argument_in_one_value_are_two_arguments(submit, options, words):
    assert submit.scheduler_words(options) == words


def test_submit_prints_what_a_node_needs_next_to_the_check(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = env_for(home)
    env.pop("XDG_CACHE_HOME", None)  # the cache is then ~/.cache, in this test's home
    done = subprocess.run([sys.executable, str(SUBMIT), "--dry-run", "--option=--ntasks-per-node=2",
                           "config/fedml_config.yaml", "--set", "data_args.centers=[0,2]"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    err = done.stderr
    assert done.returncode == 0, err
    assert "# at most 2 rank(s) per node" in err
    assert "--ranks-per-host 2" in err
    assert "a host running 2 rank(s): " in err and " with the server, " in err
    assert "one host running every rank: " in err
    # The check recorded its estimate in the user's cache, where the job's ranks look.
    cache = home / ".cache" / "flamby-mpi" / "memory_estimates.json"
    assert f"recorded for the run's memory check in {cache}" in err
    (key,) = json.loads(cache.read_text())["estimates"]
    assert key.startswith("synthetic|")
