"""The one entry point: `python -m flamby_mpi`, `python launch_client.py` and the `flamby-mpi`
console script (pyproject.toml) all run `main()`, so all three end the same way; `python -m
flamby_mpi check --cf CONFIG` is the readiness check (flamby_mpi/check.py), `python -m flamby_mpi
report RUN_DIR...` the same as `python -m flamby_mpi.report`."""


def main() -> None:
    """The command line (flamby_mpi.cli.main), then the process ends with its exit code as
    sys.exit would, minus the interpreter's teardown (flamby_mpi/exit/fast_exit.py). Never returns.
    `check` first runs the readiness check instead (flamby_mpi/check.py)."""
    import sys

    from flamby_mpi.runtime import import_gc

    _current_directory_importable()

    # First: the cyclic collector's passes over the objects the imports make cost a rank 0.3 s
    # of CPU (flamby_mpi/runtime/import_gc.py); cli.main resumes it once the plan is made.
    import_gc.pause()
    from flamby_mpi.exit.fast_exit import exit_now
    from flamby_mpi.runtime import torch_without_meta_kernels

    # Before anything imports torch: its meta kernels run only if something may use them (0.31 s of CPU a rank).
    torch_without_meta_kernels.install()
    if sys.argv[1:2] == ["check"]:
        import_gc.resume()  # the readiness check may wait on its probes: no collector held off there
        from flamby_mpi.check import main as check

        exit_now(check(sys.argv[2:]))
    if sys.argv[1:2] == ["report"]:  # as `check`: `python -m flamby_mpi.report` is the documented form
        import_gc.resume()
        from flamby_mpi.outputs.report import main as report

        exit_now(report(sys.argv[2:]))
    from flamby_mpi.exit import preemption
    from flamby_mpi.launch.environment import rank_from_environment

    # Before torch's import: SIGTERM/SIGINT end a rank that has no cut to save yet with 143/130.
    preemption.stop_outside_round_loop(speaks=rank_from_environment() in (None, 0))
    from flamby_mpi.cli import main as command_line

    exit_now(command_line())


def _current_directory_importable() -> None:
    """A user's dataset module in the directory the command runs in (data_args.dataset: my_silos)
    is found by every entry point, as `python -m flamby_mpi` (and so `check`) finds it: `python
    launch_client.py` and the console script put their own directory first instead, so the check
    said ready and the run said "unknown dataset". Appended: it never shadows an installed package."""
    import os
    import sys

    try:
        here = os.getcwd()
    except OSError:  # the directory was removed: nothing to find there
        return
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)


if __name__ == "__main__":
    main()
