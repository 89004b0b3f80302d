"""`python -m flamby_mpi ...` is the same as `python launch_client.py ...`."""
from flamby_mpi.cli import main
from flamby_mpi.fast_exit import exit_now

exit_now(main())
