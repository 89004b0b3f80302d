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
