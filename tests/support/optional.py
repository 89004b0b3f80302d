"""What the FLamby tests need beyond `pip install -e ".[test]"`: FLamby with its datasets' extras,
opacus, and FLamby's data and published results in ../shared/data.

Outside CI a test without them skips with the reason and what installs them; under CI (`CI=true`,
where .ci/run installs them with scripts/install_flamby_test_extras.sh and has ../shared beside the
checkout) it fails instead, so that CI never passes by skipping them. tests/conftest.py does the
same for a test that skips on its own for FLamby's or opacus's absence (FLAMBY_SKIP).
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

from .facility import missing

INSTALL = "scripts/install_flamby_test_extras.sh installs FLamby and its extras (docs/testing.md)"
# The skip reasons that mean FLamby, a dataset's extra or opacus is absent: pytest.importorskip's
# own, and the ones tests write ("FLamby is not installed", "FLamby's kits19 extra is not
# installed", "flamby.datasets.fed_ixi: No module named 'monai'", "... needs opacus ...").
FLAMBY_SKIP = re.compile(r"could not import '(flamby|opacus)\b|\bflamby\b[^\n]*\bnot installed"
                         r"|\bneeds opacus\b|^flamby\.datasets\.", re.IGNORECASE)


def import_or_skip(module: str):
    """The module (flamby, flamby.datasets.<name>, opacus...), or a skip (a failure under CI)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        problem = str(exc)
    # Outside `except`, so that the report is one line, not a chained traceback.
    missing(f"{module} cannot be imported ({problem}); {INSTALL}")


def shared_or_skip(*paths: Path):
    """FLamby's data or published results in ../shared/data, or a skip (a failure under CI)."""
    absent = [str(path) for path in paths if not path.exists()]
    if absent:
        missing(f"{', '.join(absent)} absent (../shared/data beside the checkout)")
