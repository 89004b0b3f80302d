"""flamby-mpi: FLamby's cross-silo benchmarks as real distributed jobs over MPI with FedML."""

__version__ = "0.1.0"
