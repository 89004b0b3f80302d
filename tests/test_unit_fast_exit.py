"""flamby_mpi.fast_exit and flamby_mpi.datasets.deferred_imports: the process-level shortcuts of the
launcher, checked in real child processes."""
import subprocess
import sys
import textwrap

ENDING = textwrap.dedent("""
    import atexit, logging, sys
    from flamby_mpi.fast_exit import exit_now
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
              "from flamby_mpi.fast_exit import exit_now\n"
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


def test_exit_now_runs_the_c_level_exit_handlers_libraries_registered(tmp_path):
    # MPI and other C libraries register cleanups with atexit(3) or on_exit(3): they run at a
    # normal exit, and must still run here (os._exit would skip them)
    script = ("import ctypes, sys; from flamby_mpi.fast_exit import exit_now\n"
              "handler = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p)(\n"
              "    lambda status, _: open(sys.argv[1], 'w').write(f'ran with {status}'))\n"
              "ctypes.CDLL(None).on_exit(handler, None); exit_now(4)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "c_atexit")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 4, done.stderr
    assert (tmp_path / "c_atexit").read_text() == "ran with 4"
