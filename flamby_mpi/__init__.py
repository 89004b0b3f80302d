"""flamby-mpi: FLamby's cross-silo benchmarks as real distributed jobs over MPI with FedML."""
import time as _time

__version__ = "0.1.0"
# When this process started running our code, before any heavy import: start-up times count from here.
PROCESS_START = _time.time()
