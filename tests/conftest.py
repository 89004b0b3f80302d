"""Shared fixtures; the rule that keeps heavy tests out of a plain `python -m pytest`; and under CI,
a FLamby test that skips is a failure.

`heavy` tests (setup.cfg's markers) need tens of GB of memory or dozens of ranks: they run when
asked for, by a `-m` expression naming `heavy` (`python -m pytest -m heavy`), by their node id
(`python -m pytest tests/test_wire.py::test_a_model_over_2_gib_trains_with_two_clients`), or
with FLAMBY_MPI_HEAVY=1 (the older switch, kept as an alias). Any other run deselects them, also
one with its own `-m` (`-m "not slow"` must not start a 65-rank job).
"""
import os
import uuid
from pathlib import Path

import pytest

from support.facility import under_ci
from support.optional import FLAMBY_SKIP

HEAVY = "heavy"
HEAVY_ENV = "FLAMBY_MPI_HEAVY"


def _heavy_asked_for(config) -> bool:
    return HEAVY in (config.option.markexpr or "") or os.environ.get(HEAVY_ENV) == "1"


def _named_on_command_line(item, config) -> bool:
    """Whether an argument names this test (or its class, or it without its parameters)."""
    test = item.nodeid.partition("::")[2]
    for arg in config.args:
        path, sep, name = arg.partition("::")
        if sep and Path(config.invocation_params.dir, path).resolve() == Path(item.path).resolve() and \
                (test == name or test.startswith((name + "[", name + "::"))):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    if _heavy_asked_for(config):
        return
    keep, heavy = [], []
    for item in items:
        asked = not item.get_closest_marker(HEAVY) or _named_on_command_line(item, config)
        (keep if asked else heavy).append(item)
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = keep


def pytest_report_header(config):
    if not _heavy_asked_for(config):
        return f"heavy tests deselected: run them with -m {HEAVY} (tests/conftest.py)"
    return None


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
