"""The start-up memory check under real mpiexec (-np 3, the built-in synthetic dataset): the estimate
`python -m flamby_mpi check` records is what the ranks read; a job whose host cannot hold its ranks
by that estimate ends on every rank with exit 2 and one message before any data is loaded, and a job
that fits runs. The estimate is made too big by editing the check's own file (one figure), not by
faking /proc: the ranks read the real MemAvailable."""
import json
import shlex
import sys

import pytest

from support.mpi import DEFAULT_CONFIG, LAUNCHER, mpiexec, run_job
from support.mpi import test_env as env_for

pytestmark = pytest.mark.mpi

SMALL = ["--set", "data_args.synthetic_num_centers=2", "--set", "data_args.synthetic_samples_per_center=24",
         "--set", "train_args.comm_round=1", "--set", "train_args.num_updates=1"]
PEBIBYTE = 2**50


def _checked(workdir):
    """The check run on the job's config, recording into a file of the test's own: (path, its JSON)."""
    cwd, home, _ = workdir
    path = cwd / "estimates.json"
    done = run_job([sys.executable, "-m", "flamby_mpi", "check", "--cf", str(DEFAULT_CONFIG), *SMALL,
                    "--set", f"device_args.memory_estimates_file={path}"], cwd, env_for(home), 120)
    assert done.returncode == 0, done.output
    assert f"recorded for the run's memory check in {path}" in done.stdout
    return path, json.loads(path.read_text())


def _job(workdir, out, estimates, *extra, deadline_s=120):
    """mpiexec -n 3, each rank's own exit code printed by the shell that started it."""
    cwd, home, marker = workdir
    rank_cmd = shlex.join([sys.executable, str(LAUNCHER), "--cf", str(DEFAULT_CONFIG), "--run_id", marker,
                           "--set", f"common_args.output_dir={out}", *SMALL,
                           "--set", f"device_args.memory_estimates_file={estimates}", *extra])
    script = f'{rank_cmd}; code=$?; echo "rank $PMI_RANK exited $code"; exit $code'
    return run_job([mpiexec(), "-n", "3", "sh", "-c", script], cwd, env_for(home), deadline_s, marker=marker)


def _exits(done):
    return sorted(line.split()[1] + ":" + line.split()[-1] for line in done.stdout.splitlines()
                  if line.startswith("rank ") and " exited " in line)


def test_a_job_too_big_for_its_host_exits_2_on_every_rank_with_one_message(workdir):
    path, estimates = _checked(workdir)
    (key,) = estimates["estimates"]
    assert key.startswith("synthetic|model ") and "|batch 16|" in key
    estimates["estimates"][key]["client_bytes"] = PEBIBYTE  # a client "needs" a pebibyte
    path.write_text(json.dumps(estimates))
    out = workdir[0] / "refused"
    done = _job(workdir, out, path, deadline_s=90)
    output = done.output
    assert done.returncode == 2, output
    assert _exits(done) == ["0:2", "1:2", "2:2"], output  # every rank, by itself: no abort, no hang
    assert done.leftovers == []
    assert output.count("does not fit in memory") == 1, output  # said once, by rank 0
    assert "flamby-mpi: error on every rank: the job does not fit in memory: host " in output
    assert "runs ranks 0, 1, 2, which need about" in output
    assert "2 client(s) 1,024.0 TiB each" not in output  # sizes are shown in GiB
    assert "2 client(s) 1,048,576.0 GiB each" in output
    assert "available (MemAvailable" in output
    assert "Estimate per rank: server" in output and "python -m flamby_mpi check of" in output
    assert "HINT: run fewer ranks per host" in output and "--set device_args.memory_check=false" in output
    assert "Traceback" not in output
    assert not out.exists()  # refused before the output directory was taken


def test_a_job_that_fits_runs_and_the_override_runs_a_refused_one(workdir):
    path, estimates = _checked(workdir)
    done = _job(workdir, workdir[0] / "fits", path)
    assert done.returncode == 0, done.output
    assert _exits(done) == ["0:0", "1:0", "2:0"]
    assert "does not fit" not in done.output
    assert (workdir[0] / "fits" / "results.json").exists()
    (key,) = estimates["estimates"]
    estimates["estimates"][key]["client_bytes"] = PEBIBYTE
    path.write_text(json.dumps(estimates))
    done = _job(workdir, workdir[0] / "anyway", path, "--set", "device_args.memory_check=false")
    assert done.returncode == 0, done.output
    assert (workdir[0] / "anyway" / "results.json").exists()
