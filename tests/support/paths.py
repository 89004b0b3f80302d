"""Paths outside the repository that tests read."""
from pathlib import Path

# ../shared/data beside the checkout: FLamby's datasets and its published benchmark results.
# Tests that need it skip with a reason when it is absent.
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
