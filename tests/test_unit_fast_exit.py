"""flamby_mpi.exit.fast_exit and flamby_mpi.datasets.deferred_imports: the process-level shortcuts of the
launcher, checked in real child processes; the one entry point all three ways of starting it share."""
import subprocess
import sys
import textwrap

from support.mpi import REPO
from support.mpi import test_env as job_env

ENDING = textwrap.dedent("""
    import atexit, logging, sys
    from flamby_mpi.exit.fast_exit import exit_now
    logging.basicConfig(filename=sys.argv[1] + "/log.txt", level=logging.INFO)
    atexit.register(lambda: open(sys.argv[1] + "/atexit.txt", "w").write("ran"))
    logging.getLogger("x").info("the last log line")
    sys.stdout.write("unflushed stdout")  # no newline, no flush
    exit_now({code})
""")


def _end(tmp_path, code):
    return subprocess.run([sys.executable, "-c", ENDING.format(code=code), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)


def test_exit_now_keeps_the_code_the_exit_handlers_and_what_was_written(tmp_path):
    done = _end(tmp_path, 3)
    assert done.returncode == 3
    assert done.stdout == "unflushed stdout"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert "the last log line" in (tmp_path / "log.txt").read_text()


def test_exit_now_takes_what_sys_exit_takes(tmp_path):
    assert _end(tmp_path, "None").returncode == 0
    done = _end(tmp_path, "'a message'")
    assert done.returncode == 1 and "a message" in done.stderr


def test_exit_now_finalizes_mpi(tmp_path):
    script = ("import atexit, sys; from mpi4py import MPI\n"
              "from flamby_mpi.exit.fast_exit import exit_now\n"
              "atexit.register(lambda: print('finalized before the handlers:', MPI.Is_finalized()))\n"
              "MPI.COMM_WORLD.Barrier(); exit_now(0)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "finalized before the handlers: False" in done.stdout


DEFERRED = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from flamby_mpi.datasets.deferred_imports import deferring
    with deferring(["heavy", "heavy.sub"]):
        import heavy.sub as sub      # the pattern of FLamby's `import matplotlib.pyplot as plt`
        import light
    assert not __import__("os").path.exists(sys.argv[1] + "/heavy_ran"), "heavy ran at import"
    assert light.VALUE == 1          # modules not named import as usual
    assert sub.twice(21) == 42       # first use: the module runs now, and works
    assert __import__("os").path.exists(sys.argv[1] + "/heavy_ran")
    import importlib.util
    assert not any(type(f).__name__ == "_LazyFinder" for f in sys.meta_path)
    print("ok")
""")


def test_deferred_modules_run_on_first_use_only(tmp_path):
    package = tmp_path / "heavy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sub.py").write_text(
        f"open({str(tmp_path / 'heavy_ran')!r}, 'w').close()\n"
        "def twice(x):\n    return 2 * x\n")
    (tmp_path / "light.py").write_text("VALUE = 1\n")
    done = subprocess.run([sys.executable, "-c", DEFERRED, str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


HOLLOW = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from flamby_mpi.datasets.deferred_imports import deferring
    from flamby_mpi.runtime.startup import loaded_modules
    ran = lambda: os.path.exists(sys.argv[1] + "/init_ran")
    with deferring([], packages={"pkg": {"split": "pkg._split"}}):
        from pkg import split        # the pattern of FLamby's `from sklearn.model_selection import ...`
    assert not ran(), "the package's __init__.py ran at import"
    assert split(7) == (3, 4)        # the name comes from the submodule that defines it
    import pkg
    assert split is pkg._split.split and not ran()
    assert "pkg" not in loaded_modules() and "pkg._split" in loaded_modules()
    assert pkg.OTHER == "from __init__" and ran()   # any other name: the real __init__.py runs, once
    assert pkg.split is split and "pkg" in loaded_modules()
    assert "_flamby_mpi_hollow" not in vars(pkg) and "__getattr__" not in vars(pkg)
    try:
        pkg.missing
    except AttributeError:
        pass
    else:
        raise AssertionError("a name the package lacks must still be an AttributeError")
    assert open(sys.argv[1] + "/init_ran").read() == "x"
    print("ok")
""")


def test_hollow_packages_hand_over_listed_names_and_run_their_init_on_other_use(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        f"open({str(tmp_path / 'init_ran')!r}, 'a').write('x')\n"
        "from pkg._split import split\n"
        "OTHER = 'from __init__'\n")
    (package / "_split.py").write_text("def split(n):\n    return n // 2, n - n // 2\n")
    done = subprocess.run([sys.executable, "-c", HOLLOW, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_exit_now_runs_the_c_level_exit_handlers_libraries_registered(tmp_path):
    # MPI and other C libraries register cleanups with atexit(3) or on_exit(3): they run at a
    # normal exit, and must still run here (os._exit would skip them)
    script = ("import ctypes, sys; from flamby_mpi.exit.fast_exit import exit_now\n"
              "handler = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p)(\n"
              "    lambda status, _: open(sys.argv[1], 'w').write(f'ran with {status}'))\n"
              "ctypes.CDLL(None).on_exit(handler, None); exit_now(4)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "c_atexit")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 4, done.stderr
    assert (tmp_path / "c_atexit").read_text() == "ran with 4"


# ---- One entry point: launch_client.py, `python -m flamby_mpi`, the `flamby-mpi` console script ----

# Loaded by every interpreter started with this directory on PYTHONPATH: an object whose finalizer
# runs only in the interpreter's teardown, which fast_exit skips.
WITNESS = textwrap.dedent("""
    import os
    class _TeardownWitness:
        def __del__(self, write=os.write):
            write(2, b"interpreter teardown ran\\n")
    witness = _TeardownWitness()
""")


def _console_script_command():
    """What pip's generated `flamby-mpi` runs: the function pyproject.toml names, through sys.exit."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    module, function = pyproject["project"]["scripts"]["flamby-mpi"].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


def test_the_three_entry_points_are_one_function():
    assert _console_script_command()[-1].endswith("from flamby_mpi.__main__ import main; sys.exit(main())")
    source = (REPO / "launch_client.py").read_text()
    assert "from flamby_mpi.__main__ import main" in source and "    main()" in source


def test_the_three_entry_points_end_a_bad_config_the_same_way(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(WITNESS)
    env = dict(job_env(tmp_path), PYTHONPATH=f"{tmp_path}:{REPO}")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_args: {comm_round: -1}\n")
    ends = {}
    for name, command in (("launch_client.py", [sys.executable, str(REPO / "launch_client.py")]),
                          ("python -m flamby_mpi", [sys.executable, "-m", "flamby_mpi"]),
                          ("flamby-mpi", _console_script_command())):
        done = subprocess.run([*command, "--cf", str(bad)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        ends[name] = (done.returncode, done.stderr)
    # The witness proves the finalizers are seen at all when a process tears down as usual.
    usual = subprocess.run([sys.executable, "-c", "pass"], env=env, capture_output=True, text=True, timeout=60)
    assert "interpreter teardown ran" in usual.stderr
    code, message = ends["launch_client.py"]
    assert code == 2 and "comm_round" in message and "Traceback" not in message, message
    assert "interpreter teardown ran" not in message  # ended by fast_exit
    assert ends == {name: (code, message) for name in ends}, ends


def test_requires_python_admits_only_what_ci_runs():
    """pyproject's requires-python claims only the versions CI tests (.ci/run makes its venv with the
    machine's python3, 3.11): this interpreter is admitted, and neither a 3.10 nor a 3.12 is."""
    import platform
    import tomllib

    from packaging.specifiers import SpecifierSet

    claimed = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    assert platform.python_version() in claimed
    assert "3.10.13" not in claimed and "3.12.0" not in claimed


def test_each_entry_point_names_itself_in_its_usage_and_the_package_runs_report(tmp_path):
    """`flamby-mpi --help` and `python -m flamby_mpi --help` said `usage: launch_client.py`, and
    `python -m flamby_mpi report RUN_DIR` (by analogy with `check`) failed asking for --cf."""
    from pathlib import Path

    from test_unit_report import make_run

    console_script = Path(sys.executable).parent / "flamby-mpi"  # pip's, in the environment's bin
    assert console_script.exists(), "the project is installed with pip install -e (README)"
    env = job_env(tmp_path)
    for name, command in (("launch_client.py", [sys.executable, str(REPO / "launch_client.py")]),
                          ("python -m flamby_mpi", [sys.executable, "-m", "flamby_mpi"]),
                          ("flamby-mpi", [str(console_script)])):
        done = subprocess.run([*command, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0 and done.stdout.startswith(f"usage: {name} [-h] --cf CONFIG"), done.stdout[:200]
    run = make_run(tmp_path, "r1")
    shown = [subprocess.run([sys.executable, "-m", *module, str(run)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120) for module in (["flamby_mpi", "report"], ["flamby_mpi.report"])]
    assert [done.returncode for done in shown] == [0, 0] and "client_test_1" in shown[0].stdout, shown
    assert shown[0].stdout == shown[1].stdout
