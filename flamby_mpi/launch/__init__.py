"""How a rank learns its place in the job: its rank, the world size and the communicator."""
from .environment import rank_from_environment
from .world import (
    CLIENT,
    SERVER,
    World,
    check_rank_role,
    check_world,
    mpi_world,
    role_of,
    singleton_world,
)

__all__ = [
    "CLIENT", "SERVER", "World", "check_rank_role", "check_world", "mpi_world", "rank_from_environment",
    "role_of", "singleton_world",
]
