"""Bad input, found by a generator (issue 11): every generated malformed config or command line
exits 2 within seconds with one message saying what to fix, no traceback, no hang, and writes nothing.

The cases come from tests/support/bad_input.py (a fixed seed). Each runs in process through
`flamby_mpi.cli.main(argv)`, with MPI replaced by a stub that fails the case if it is reached (the
mistake must be found before any MPI call or training); a sample also runs as a real
`python launch_client.py` process.

Values that pass the schema and break where they are used (issue 18, ids `use-...`) must be refused
the same way, on every rank before MPI starts: one of each kind also runs under a real
`mpiexec -n 5`. Their accepted neighbours (ids `ok-...`) must pass every check in process, and run
to exit 0 under `mpiexec -n 5` (merged into a few runs of one round each, run one after
another by the same 5 ranks).
"""
import importlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from flamby_mpi import cli
from support.bad_input import (
    BASE_FILE,
    CF,
    OUT,
    OUT_PARENT,
    SEED,
    TEN_MB,
    base_raw,
    dump,
    flow,
    generate,
)
from support.mpi import LAUNCHER, mpiexec, run_job, run_mpi
from support.mpi import test_env as job_env  # aliased: pytest would collect test_env

CASES = generate()
# Generous for a loaded 2-core CI machine; the cases take milliseconds to about a second.
SECONDS_PER_CASE = 10.0
MESSAGE_LIMIT = 10_000  # characters on stderr: one message, however big the input
LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "SLURM_", "PBS_", "MPI_LOCALRANKID", "FLAMBY_MPI_")
# The sample that also runs as real processes (python launch_client.py): the first case whose id
# starts with each of these, one of each kind of input.
PROCESS_SAMPLE = ("binary-random-4096", "large-10MB+1", "tag-python-apply", "set-no-equals",
                  "runid-dotdot-slash-")


class ReachedMPI(AssertionError):
    """The case got past every check: it would have started MPI or a run."""


def _reached(*args, **kwargs):
    raise ReachedMPI("this input was not refused before MPI (or the in-process run) started")


def test_the_generator_makes_at_least_150_cases_the_same_each_time():
    assert len(CASES) >= 150, len(CASES)
    assert [c.id for c in generate()] == [c.id for c in CASES]
    assert generate() == CASES, f"random.Random({SEED}) should fix every choice"
    kinds = {c.id.split("-")[0] for c in CASES}
    assert kinds >= {"type", "range", "choice", "section", "key", "missing", "yaml", "tag", "duplicate",
                     "nesting", "binary", "empty", "large", "runid", "unicode", "set", "rank", "usage", "path"}


def plant(case, where: Path, cwd: Path) -> dict:
    """Makes what the case's `plant` says; returns the values of OUT and OUT_PARENT."""
    where.mkdir(parents=True, exist_ok=True)
    out = where / "out"
    if case.plant == "file":
        out.write_text("not a directory\n")
    elif case.plant == "under-file":
        (where / "file").write_text("not a directory\n")
        out = where / "file" / "out"
    elif case.plant == "unwritable":
        if os.geteuid() == 0:  # root may write any directory but /proc's: access(2) says no there too
            out = Path("/proc/1/flamby-mpi-out")
        else:
            (where / "locked").mkdir(mode=0o555)
            out = where / "locked" / "out"
    elif case.plant == "runs-file":
        (cwd / "runs").write_text("not a directory\n")
    return {OUT: str(out), OUT_PARENT: str(out.parent)}


def substitute(text: str, values: dict) -> str:
    for name, value in values.items():
        text = text.replace(name, value)
    return text


def write_case(case, where: Path) -> str:
    """Puts the case's config where its argv says CF; returns that path."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / "config.yaml"
    if case.special == "dir":
        path.mkdir()
    elif case.special == "fifo":
        os.mkfifo(path)
    elif case.special == "loop":
        os.symlink(where / "loop2.yaml", path)
        os.symlink(path, where / "loop2.yaml")
    elif case.size > 100 * TEN_MB:
        path.write_bytes(case.config)
        os.truncate(path, case.size)  # sparse: refused by its size, never read
    elif case.size:
        pad = case.size - len(case.config) - 2  # a valid YAML file: refused by its size alone
        path.write_bytes(case.config + b"#" + b"x" * pad + b"\n")
    elif case.config is not None and case.special != "missing":
        path.write_bytes(case.config)
    return str(path)


def argv_of(case, path: str, values: dict = None):
    return [path if a == CF else substitute(a, values or {}) for a in case.argv]


def snapshot(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def check_message(case, code, out: str, err: str, values: dict = None):
    """Exit 2, and stderr holds one message: no traceback, nothing on stdout."""
    shown = f"{case.id}: exit {code}\nstdout:\n{out[:2000]}\nstderr:\n{err[:3000]}"
    assert code == 2, shown
    assert "Traceback" not in out + err, shown
    assert out == "", shown
    assert len(err) <= MESSAGE_LIMIT, f"{case.id}: a message of {len(err)} characters\n{err[:3000]}"
    lines = err.splitlines()
    if case.usage:
        errors = [line for line in lines if line.startswith("launch_client.py: error:")]
        assert len(errors) == 1 and lines[0].startswith("usage:"), shown
        others = [line for line in lines if line not in errors and not line.startswith(("usage:", " "))]
        assert "flamby-mpi: error" not in err and not others, shown
    else:
        errors = [line for line in lines if line.startswith("flamby-mpi: error")]
        assert len(errors) == 1 and lines[0] == errors[0], shown
        # The rest of the one message: the problems of one ConfigError, and a HINT.
        rest = lines[1:]
        assert all(line.startswith("  - ") for line in rest if not line.startswith("HINT: ")), shown
        assert sum(line.startswith("HINT: ") for line in rest) <= 1, shown
    expect = substitute(case.expect, values or {})
    assert any(e in err for e in expect.split("|")), \
        f"{case.id}: the message does not mention {expect!r}\n{err[:3000]}"


@pytest.fixture(scope="module")
def heavy_imports():
    """Imported once before the timed cases: some cases are refused by the run plan, which imports
    torch; the first would otherwise pay for that import."""
    for name in ("flamby_mpi.driver", "flamby_mpi.plan", "flamby_mpi.transport.inprocess"):
        importlib.import_module(name)


@pytest.fixture
def stubbed_mpi(monkeypatch):
    """Anything past the checks fails the case; mpirun's world is read from PMI_RANK/PMI_SIZE."""
    from flamby_mpi.launch import World

    real_check_world = cli.check_world

    def fake_mpi_world():
        env = os.environ
        if "PMI_SIZE" not in env:
            _reached()
        return World(comm=None, rank=int(env["PMI_RANK"]), size=int(env["PMI_SIZE"]), host="fake",
                     local_rank=0)

    def check_then_stop(world, *args):
        real_check_world(world, *args)
        if world.comm is None and world.size > 1:  # the fake mpirun world passed its checks
            _reached()

    monkeypatch.setattr(cli, "warn_if_foreign_launcher", lambda: None)
    monkeypatch.setattr(cli, "mpi_world", fake_mpi_world)
    monkeypatch.setattr(cli, "check_world", check_then_stop)
    # The ranks agree on the check (cli._check_world_together): the fake world's other ranks
    # found what this one found.
    monkeypatch.setattr(cli, "world_allgather", lambda comm, value: [value] * int(os.environ["PMI_SIZE"]))
    monkeypatch.setattr(cli, "reexec_under_mpiexec", _reached)
    monkeypatch.setattr(cli, "join_world", _reached)
    monkeypatch.setattr("flamby_mpi.transport.inprocess.InProcessTransport", _reached)
    monkeypatch.setattr("flamby_mpi.driver.run", _reached)


def isolate(tmp_path: Path, monkeypatch, env=()):
    """A fresh working directory and HOME, and no launcher variables but the case's."""
    cwd, home, inputs = tmp_path / "cwd", tmp_path / "home", tmp_path / "in"
    cwd.mkdir()
    home.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith(LAUNCHER_PREFIXES):
            monkeypatch.delenv(name)
    for name, value in env:
        monkeypatch.setenv(name, value)
    return cwd, home, inputs


def test_the_valid_base_gets_past_every_check(tmp_path, monkeypatch, heavy_imports, stubbed_mpi):
    """Each case is one mistake on this valid run: without the mistake, the stubs are reached."""
    cwd, home, inputs = isolate(tmp_path, monkeypatch)
    inputs.mkdir()
    path = inputs / "config.yaml"
    path.write_bytes(dump(base_raw()))
    for extra in ([], ["--run_id", "r1", "--quiet"], ["--rank", "1", "--role", "client", "--run_id", "r1"],
                  ["--set", "comm_args.backend=inprocess"]):
        with pytest.raises(ReachedMPI):
            cli.main(["--cf", str(path)] + extra)
    monkeypatch.setenv("PMI_RANK", "2")
    monkeypatch.setenv("PMI_SIZE", "5")
    with pytest.raises(ReachedMPI):
        cli.main(["--cf", str(path), "--rank", "2", "--role", "client"])
    assert snapshot(cwd) == [] and snapshot(home) == []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_message(case, tmp_path, monkeypatch, capsys, heavy_imports, stubbed_mpi):
    """A refused case exits 2 with its message; an accepted one (`ok-...`) gets past every check
    (to the MPI stub). Neither writes anything."""
    cwd, home, inputs = isolate(tmp_path, monkeypatch, case.env)
    path = write_case(case, inputs)
    values = plant(case, inputs, cwd)
    before = [snapshot(cwd), snapshot(home), snapshot(inputs)]

    start = time.monotonic()
    try:
        code = cli.main(argv_of(case, path, values))
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    except ReachedMPI:
        code = None
    seconds = time.monotonic() - start
    out, err = capsys.readouterr()

    if case.accepted:
        assert code is None, f"{case.id} is valid but was refused (exit {code}):\n{err[:3000]}"
        assert "Traceback" not in out + err and "error" not in err, err
    else:
        assert code is not None, f"{case.id} got past every check:\n{err[:3000]}"
        check_message(case, code, out, err, values)
    assert seconds < SECONDS_PER_CASE, f"{case.id} took {seconds:.1f} s"
    # Nothing written: not in the working directory (where runs/ would go), not in HOME, not beside
    # the config (a python tag's `touch pwned` would land in the working directory).
    assert [snapshot(cwd), snapshot(home), snapshot(inputs)] == before


SAMPLE = [next(c for c in CASES if c.id.startswith(prefix)) for prefix in PROCESS_SAMPLE]


def test_the_process_sample_can_run_as_processes():
    assert len({c.id for c in SAMPLE}) == len(PROCESS_SAMPLE) <= 5
    assert all(c.in_a_process for c in SAMPLE)


@pytest.mark.parametrize("case", SAMPLE, ids=[c.id for c in SAMPLE])
def test_bad_input_as_a_real_process(case, tmp_path):
    """The same cases through `python launch_client.py`: exit 2 within seconds, one message, nothing
    written. They stop at the config stage (no MPI job is started)."""
    cwd, home, inputs = tmp_path / "cwd", tmp_path / "home", tmp_path / "in"
    cwd.mkdir()
    home.mkdir()
    path = write_case(case, inputs)
    before = snapshot(inputs)
    env = {k: v for k, v in job_env(home).items() if not k.startswith(LAUNCHER_PREFIXES)}
    done = run_job([sys.executable, str(LAUNCHER)] + argv_of(case, path), cwd, env, deadline_s=120)
    check_message(case, done.returncode, done.stdout, done.stderr)
    assert done.seconds < 30, f"{case.id} took {done.seconds:.1f} s"
    assert snapshot(cwd) == [] and snapshot(home) == [] and snapshot(inputs) == before


# ---- values past the schema under a real mpirun (issue 18) -----------------------------------

# One refused case of each kind of value (`use-<kind>-...`): the first the generator made.
MPI_KINDS = sorted({c.id.split("-")[1] for c in CASES if c.id.startswith("use-")})
MPI_SAMPLE = [next(c for c in CASES if c.id.startswith(f"use-{kind}-")) for kind in MPI_KINDS]
JOBS = sorted({c.job for c in CASES if c.accepted})
# One round of one local step on small centres: the accepted values are used, and the job ends.
TINY = ["--set", "train_args.comm_round=1", "--set", "train_args.num_updates=1",
        "--set", "data_args.synthetic_samples_per_center=8", "--quiet"]


def test_the_mpi_sample_covers_every_kind_of_value():
    assert set(MPI_KINDS) >= {"seed", "count", "float32", "decay", "tau", "probability", "limit", "optimizer",
                              "scaffold", "outdir", "runid"}, MPI_KINDS
    accepted = [c for c in CASES if c.accepted]
    assert {c.id.split("-")[1] for c in accepted} >= {"seed", "count", "float32", "decay", "tau", "outdir",
                                                       "runid", "scaffold"}
    assert 1 <= len(JOBS) <= 5 and all(c.job for c in accepted)


@pytest.mark.parametrize("case", MPI_SAMPLE, ids=[c.id for c in MPI_SAMPLE])
def test_values_past_the_schema_under_mpirun(case, tmp_path):
    """`mpiexec -n 5 python launch_client.py ...`: every rank finds the problem before MPI_Init's
    job starts; rank 0 says it once; exit 2; nothing written."""
    cwd, home, inputs = tmp_path / "cwd", tmp_path / "home", tmp_path / "in"
    cwd.mkdir()
    home.mkdir()
    path = write_case(case, inputs)
    values = plant(case, inputs, cwd)
    before = [snapshot(cwd), snapshot(home), snapshot(inputs)]
    done = run_mpi(5, argv_of(case, path, values), cwd, home, deadline_s=180)
    check_message(case, done.returncode, done.stdout, done.stderr, values)
    assert [snapshot(cwd), snapshot(home), snapshot(inputs)] == before


def settings(case) -> list:
    """The case's change to the base config, as --set/--run_id arguments (merged into a job)."""
    argv = list(case.argv)
    del argv[argv.index("--cf"):argv.index("--cf") + 2]
    base, raw = base_raw(), yaml.safe_load(case.config) if case.config else {}
    for section, body in (raw or {}).items():
        for key, value in (body or {}).items():
            if base.get(section, {}).get(key, object()) != value:
                argv += ["--set", f"{section}.{key}={flow(value)}"]
    return argv


def _job_argv(job) -> list:
    cases = [c for c in CASES if c.job == job]
    return ["--cf", str(BASE_FILE)] + [a for c in cases for a in settings(c)] + TINY


@pytest.fixture(scope="module")
def accepted_runs(tmp_path_factory):
    """Every merged job once, one after another in one `mpiexec -n 5` (support/many_runs.py calls the
    real entry point once per job, each in its own working directory): starting 5 ranks costs more
    than a one-round run. HOME is shared, which only the job with output_dir under ~ writes to."""
    base = tmp_path_factory.mktemp("accepted")
    home = base / "home"
    home.mkdir()
    runs = []
    for job in JOBS:
        (base / job).mkdir()
        runs.append({"name": job, "argv": _job_argv(job), "cwd": str(base / job)})
    marker = f"t{uuid.uuid4().hex[:10]}"  # in the plan's name: a rank left behind is found by it
    plan, report = base / f"{marker}-plan.json", base / "report.json"
    plan.write_text(json.dumps({"runs": runs, "report": str(report)}))
    done = run_job([mpiexec(), "-n", "5", sys.executable, "-m", "support.many_runs", str(plan)], base,
                   job_env(home), deadline_s=120 + 60 * len(JOBS), marker=marker)
    ran = {run["name"]: run for run in json.loads(report.read_text())["runs"]} if report.exists() else {}
    return base, home, done, ran


@pytest.mark.timeout(600)
@pytest.mark.parametrize("job", JOBS)
def test_accepted_boundaries_run_to_exit_0_under_mpirun(job, accepted_runs):
    """The last values allowed (seed 2**63-1, float32's largest, betas just below 1, tau at float32's
    smallest, 216-byte run ids, output_dir under ~ ...), merged into one job per strategy: one round
    under `mpiexec -n 5` ends with exit 0 on every rank and its results where they belong."""
    argv = _job_argv(job)
    keys = [a.partition("=")[0] for a in argv if "=" in a and not a.startswith("train_args.federated_optimizer")]
    assert len(keys) == len(set(keys)), f"{job} sets a key twice: {keys}"
    base, home, done, ran = accepted_runs
    cwd = base / job
    assert job in ran, f"the shared mpiexec job ended before running {job}: exit {done.returncode}\n" \
                       f"{done.output[-4000:]}"
    assert ran[job]["codes"] == [0] * 5 and ran[job]["problems"] == [], f"{job}: {ran[job]}\n{done.output[-4000:]}"
    assert "Traceback" not in done.output
    if "common_args.output_dir=~/flamby-run" in argv:  # ~ is the home directory, as for secret_file
        assert not (cwd / "~").exists()
        results = [home / "flamby-run" / "results.json"]
    else:
        results = list((cwd / "runs").glob("*/results.json"))
    assert len(results) == 1 and results[0].exists(), (snapshot(cwd), snapshot(home))
    summary = json.loads(results[0].read_text())
    assert summary["rounds_completed"] == 1
    if "--run_id" in argv:
        assert summary["run_id"] == argv[argv.index("--run_id") + 1] == results[0].parent.name
    for flag, field, number in (("common_args.random_seed", "seed", int),
                                ("train_args.learning_rate", "learning_rate", float)):
        given = [a for a in argv if a.startswith(flag + "=")]
        if given:  # the value was used as given (YAML 1.1 reads 3.4e38, without a dot, as a string)
            assert summary[field] == number(yaml.safe_load(given[0].partition("=")[2]))


def test_the_shared_accepted_job_ended_cleanly(accepted_runs):
    _, _, done, ran = accepted_runs
    assert done.returncode == 0, done.output[-4000:]
    assert list(ran) == JOBS and done.leftovers == []
