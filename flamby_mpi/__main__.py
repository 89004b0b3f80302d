"""`python -m flamby_mpi ...` is the same as `python launch_client.py ...`."""
import sys

from flamby_mpi.cli import main

sys.exit(main())
