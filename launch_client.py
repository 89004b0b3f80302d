"""Entry point: `mpirun -np N+1 python launch_client.py --cf config/<dataset>.yaml`.

Everything lives in the flamby_mpi package; see `python launch_client.py --help`. The same entry
as `python -m flamby_mpi` and the `flamby-mpi` command (flamby_mpi/__main__.py).
"""
from flamby_mpi.__main__ import main

if __name__ == "__main__":
    main()
