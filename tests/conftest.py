import os
import uuid

import pytest


@pytest.fixture
def workdir(tmp_path):
    """A fresh working directory and HOME for one job, with a unique marker for leftover checks."""
    home = tmp_path / "home"
    home.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return cwd, home, f"t{uuid.uuid4().hex[:10]}"


def pytest_collection_modifyitems(config, items):
    """Heavy tests are opt-in: they run only when -m names them (`-m heavy`) or FLAMBY_MPI_HEAVY=1."""
    if "heavy" in (config.option.markexpr or "") or os.environ.get("FLAMBY_MPI_HEAVY") == "1":
        return
    skip = pytest.mark.skip(reason="heavy: run with -m heavy (or FLAMBY_MPI_HEAVY=1)")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)
