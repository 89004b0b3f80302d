"""Entry point: `mpirun -np N+1 python launch_client.py --cf config/<dataset>.yaml`.

Everything lives in the flamby_mpi package; see `python launch_client.py --help`.
"""
import sys

from flamby_mpi.cli import main

if __name__ == "__main__":
    sys.exit(main())
