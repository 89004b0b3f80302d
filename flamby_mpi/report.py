"""`python -m flamby_mpi.report RUN_DIR [RUN_DIR...]`: the command; the code is flamby_mpi.outputs.report."""
import sys

from .outputs.report import main

if __name__ == "__main__":
    sys.exit(main())
