"""Entry point: `mpirun -np N+1 python launch_client.py --cf config/<dataset>.yaml`.

Everything lives in the flamby_mpi package; see `python launch_client.py --help`.
"""
from flamby_mpi.cli import main
from flamby_mpi.fast_exit import exit_now

if __name__ == "__main__":
    exit_now(main())  # as sys.exit, without the interpreter's teardown (flamby_mpi/fast_exit.py)
