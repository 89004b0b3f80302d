"""The one entry point: `python -m flamby_mpi`, `python launch_client.py` and the `flamby-mpi`
console script (pyproject.toml) all run `main()`, so all three end the same way."""


def main() -> None:
    """The command line (flamby_mpi.cli.main), then the process ends with its exit code as
    sys.exit would, minus the interpreter's teardown (flamby_mpi/exit/fast_exit.py). Never returns."""
    from flamby_mpi.cli import main as command_line
    from flamby_mpi.exit.fast_exit import exit_now

    exit_now(command_line())


if __name__ == "__main__":
    main()
