
import uuid

import pytest

from support.facility import under_ci
from support.optional import FLAMBY_SKIP


@pytest.fixture
def workdir(tmp_path):
    """A fresh working directory and HOME for one job, with a unique marker for leftover checks."""
    home = tmp_path / "home"
    home.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return cwd, home, f"t{uuid.uuid4().hex[:10]}"


def _fail_flamby_skip_under_ci(report):
    """Under CI, which installs FLamby with every extra and opacus (.ci/run), a test that skipped
    for their absence means the install broke: the report becomes a failure. support/optional.py
    does this for the tests that use it; this catches those that skip on their own
    (pytest.importorskip, a skipif or pytest.skip whose reason says FLamby or opacus is missing)."""
    if not report.skipped or hasattr(report, "wasxfail") or not under_ci():
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if FLAMBY_SKIP.search(reason):
        report.outcome = "failed"
        report.longrepr = f"CI must run this test (FLamby's path), but it skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_flamby_skip_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level importorskip skips the whole module while it is collected
    _fail_flamby_skip_under_ci(outcome.get_result())
