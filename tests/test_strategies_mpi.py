"""Every strategy under mpiexec, and bitwise equal to the in-process twin (same seed).

Starting 5 ranks (Python, torch, FedML on each) costs more than a short run, so all the cases run
in one `mpiexec -n 5` job, one after another (support/many_runs.py calls the real entry point once
per case), and all the in-process twins in one Python process. Each case still has its own test,
its own output directory and its own MPI == in-process check. The twins run in the reverse order:
a result that depended on what ran before it in the same process would show up as a mismatch.
"""
import csv
import hashlib
import json
import sys
import uuid
from types import SimpleNamespace

import pytest

from support.mpi import DEFAULT_CONFIG, LAUNCHER, mpiexec, run_job
from support.mpi import test_env as env_for
from support.optional import import_or_skip
from support.strategy_cases import CASES as STRATEGY_CASES
from support.strategy_cases import HAVE_OPACUS

FAST = ["--set", "train_args.comm_round=3", "--set", "train_args.num_updates=5",
        "--set", "validation_args.frequency_of_the_test=2"]
# Cyclic needs more rounds than FAST to reach every centre (later --set wins).
CASES = {**STRATEGY_CASES, "Cyclic": ["--set", "train_args.comm_round=5"],
         "Cyclic-own-models": ["--set", "train_args.comm_round=6", *STRATEGY_CASES["Cyclic-own-models"]]}
RUN = [case for case in CASES if HAVE_OPACUS or not case.endswith("-dp")]
# Deadlines: start-up once, then each short run (a few seconds here; generous for a loaded machine).
MPI_DEADLINE_S = 90 + 30 * len(RUN)
INPROCESS_DEADLINE_S = 60 + 15 * len(RUN)

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(MPI_DEADLINE_S + INPROCESS_DEADLINE_S + 60)]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _argv(case, run_id, output_dir):
    strategy = case.split("-")[0]
    return ["--cf", str(DEFAULT_CONFIG), "--set", f"train_args.federated_optimizer={strategy}",
            "--set", "common_args.random_seed=5", *FAST, *CASES[case],
            "--run_id", run_id, "--set", f"common_args.output_dir={output_dir}"]


def _plan(cwd, marker, kind, cases, extra=()):
    """A many_runs plan file; its name carries the marker, so leftover processes can be found."""
    report = cwd / f"{kind}-report.json"
    runs = [{"name": case, "argv": _argv(case, f"{marker}-{kind}-{i}", cwd / kind / case) + list(extra)}
            for i, case in enumerate(cases)]
    path = cwd / f"{marker}-{kind}.json"
    path.write_text(json.dumps({"runs": runs, "report": str(report)}))
    return path, report


def _report(path):
    return {run["name"]: run for run in json.loads(path.read_text())["runs"]} if path.exists() else {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case once under `mpiexec -n 5`, then every case in process (reverse order)."""
    base = tmp_path_factory.mktemp("strategies")
    cwd, home = base / "cwd", base / "home"
    cwd.mkdir()
    home.mkdir()
    marker = f"t{uuid.uuid4().hex[:10]}"
    env = env_for(home)
    plan, mpi_report = _plan(cwd, marker, "mpi", RUN)
    mpi = run_job([mpiexec(), "-n", "5", sys.executable, "-m", "support.many_runs", str(plan)],
                  cwd, env, MPI_DEADLINE_S, marker=marker)
    plan, inproc_report = _plan(cwd, marker, "inprocess", RUN[::-1], ["--set", "comm_args.backend=inprocess"])
    inproc = run_job([sys.executable, "-m", "support.many_runs", str(plan)], cwd, env, INPROCESS_DEADLINE_S,
                     marker=marker)
    return SimpleNamespace(cwd=cwd, mpi=mpi, inproc=inproc, mpi_runs=_report(mpi_report),
                           inproc_runs=_report(inproc_report))


@pytest.mark.parametrize("case", list(CASES))
def test_strategy_over_mpi_equals_in_process(case, runs):
    if case not in RUN:
        import_or_skip("opacus")  # differential privacy: a skip, or under CI a failure
    strategy = case.split("-")[0]
    for kind, job, done, ranks in (("MPI", runs.mpi, runs.mpi_runs, 5), ("in-process", runs.inproc,
                                                                          runs.inproc_runs, 1)):
        assert case in done, f"the {kind} job ended before running {case}:\n{job.output}"
        assert done[case]["codes"] == [0] * ranks and done[case]["problems"] == [], \
            f"{kind} run of {case}: {done[case]}\n{job.output}"
    mpi_out, inproc_out = runs.cwd / "mpi" / case, runs.cwd / "inprocess" / case
    assert _sha(mpi_out / "global_model.pt") == _sha(inproc_out / "global_model.pt")
    a = json.loads((mpi_out / "results.json").read_text())
    b = json.loads((inproc_out / "results.json").read_text())
    assert a["strategy"] == strategy and a["metrics"] == b["metrics"]
    assert (a["backend"], b["backend"]) == ("MPI", "inprocess")
    # Differential privacy is on record in results.json and, in FLamby's columns, in results.csv.
    dp = {"target_epsilon": 5.0, "target_delta": 0.001, "max_grad_norm": 1.0} if case.endswith("-dp") else None
    assert a["differential_privacy"] == b["differential_privacy"] == dp
    with open(mpi_out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["dp_target_epsilon"], r["dp_target_delta"], r["dp_max_grad_norm"]) for r in rows} == {
        ("5.0", "0.001", "1.0") if dp else ("", "", "")}


def test_the_shared_jobs_ended_cleanly(runs):
    assert runs.mpi.returncode == 0, runs.mpi.output
    assert runs.inproc.returncode == 0, runs.inproc.output
    assert list(runs.mpi_runs) == RUN and list(runs.inproc_runs) == RUN[::-1]
    assert runs.mpi.leftovers == [] and runs.inproc.leftovers == []


def test_in_process_refuses_rank_and_role(workdir):
    cwd, home, _ = workdir
    job = run_job([sys.executable, str(LAUNCHER), "--cf", str(DEFAULT_CONFIG), "--rank", "0", "--role", "server",
                   "--run_id", "x", "--set", "comm_args.backend=inprocess"], cwd, env_for(home), 60)
    assert job.returncode == 2 and "runs every rank in this one process" in job.stderr
