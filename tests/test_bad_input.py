"""Bad input, found by a generator (issue 11): every generated malformed config or command line
exits 2 within seconds with one message saying what to fix, no traceback, no hang, and writes nothing.

The cases come from tests/support/bad_input.py (a fixed seed). Each runs in process through
`flamby_mpi.cli.main(argv)`, with MPI replaced by a stub that fails the case if it is reached (the
mistake must be found before any MPI call or training); a sample also runs as a real
`python launch_client.py` process.
"""
import os
import sys
import time
from pathlib import Path

import pytest

from flamby_mpi import cli
from support.bad_input import CF, SEED, TEN_MB, base_raw, dump, generate
from support.mpi import LAUNCHER, run_job
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


def argv_of(case, path: str):
    return [path if a == CF else a for a in case.argv]


def snapshot(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def check_message(case, code, out: str, err: str):
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
    assert any(e in err for e in case.expect.split("|")), \
        f"{case.id}: the message does not mention {case.expect!r}\n{err[:3000]}"


@pytest.fixture(scope="module")
def heavy_imports():
    """Imported once before the timed cases: some cases are refused by the run plan, which imports
    torch; the first would otherwise pay for that import."""
    import flamby_mpi.driver  # noqa: F401
    import flamby_mpi.inprocess  # noqa: F401
    import flamby_mpi.plan  # noqa: F401


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
    monkeypatch.setattr(cli, "reexec_under_mpiexec", _reached)
    monkeypatch.setattr(cli, "join_world", _reached)
    monkeypatch.setattr("flamby_mpi.inprocess.InProcessTransport", _reached)
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
    cwd, home, inputs = isolate(tmp_path, monkeypatch, case.env)
    path = write_case(case, inputs)
    before = snapshot(inputs)

    start = time.monotonic()
    try:
        code = cli.main(argv_of(case, path))
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    seconds = time.monotonic() - start
    out, err = capsys.readouterr()

    check_message(case, code, out, err)
    assert seconds < SECONDS_PER_CASE, f"{case.id} took {seconds:.1f} s"
    # Nothing written: not in the working directory (where runs/ would go), not in HOME, not beside
    # the config (a python tag's `touch pwned` would land in the working directory).
    assert snapshot(cwd) == [] and snapshot(home) == [] and snapshot(inputs) == before


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
