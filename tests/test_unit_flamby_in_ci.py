"""Under CI the FLamby tests cannot pass by skipping (tests/support/optional.py, tests/conftest.py).

With FLamby and opacus hidden from a real pytest run in a child process, the tests that need them
fail under CI=true and skip without it: each way such a test can skip (FLamby, a dataset's module,
opacus, a fixture; a plain `pytest.importorskip` in a test and at a module's top, and the
reasons tests write), while other skips (heavy, GPU) stay skips.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

# Makes `import flamby` and `import opacus` fail and find_spec find nothing, installed or not.
HIDE = "import sys\nfor name in ('flamby', 'opacus'):\n    sys.modules[name] = None\n"

NEEDING_FLAMBY = [
    "tests/test_unit_registry.py::test_centre_counts_match_flamby_where_installed[fed_ixi]",
    "tests/test_unit_datasets.py::test_flamby_heart_resolves",
    "tests/test_flamby_real_data.py::test_fedavg_on_fed_heart_disease_reproduces_flamby_seed_42",
    "tests/test_resume.py::"
    "test_stopped_by_sigterm_then_resumed_equals_the_uninterrupted_run[FedAvg-dp]",
]
PLAIN = {
    "test_plain_in_test.py": ("import pytest\n\ndef test_plain():\n"
                              "    pytest.importorskip('opacus')\n"),
    "test_plain_at_top.py": ("import pytest\n\nflamby = pytest.importorskip('flamby.datasets')\n\n"
                             "def test_never_collected():\n    pass\n"),
    # Reasons tests write, each with its verdict under CI: a failure, or still a skip.
    "test_plain_reasons.py": """import pytest

@pytest.mark.skipif(True, reason="FLamby is not installed")
def test_marked():
    pass

def test_extra():
    pytest.skip("FLamby's kits19 extra is not installed")

def test_dp():
    pytest.skip("differential privacy needs opacus (an optional install)")

def test_dataset():
    pytest.skip("flamby.datasets.fed_ixi: No module named 'monai'")

def test_heavy_stays_a_skip():
    pytest.skip("heavy: run with -m heavy (or FLAMBY_MPI_HEAVY=1)")

def test_gpu_stays_a_skip():
    pytest.skip("a GPU is visible here")
""",
}
FAILED_UNDER_CI = ["test_plain_in_test.py::test_plain", "test_plain_at_top.py",
                   *(f"test_plain_reasons.py::test_{name}"
                     for name in ("marked", "extra", "dp", "dataset"))]


def _pytest(args, cwd, ci: bool, hidden: Path, pythonpath):
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if ci:
        env["CI"] = "true"
    env["PYTHONPATH"] = os.pathsep.join([str(hidden), *map(str, pythonpath)])
    env["COLUMNS"] = "300"  # summary lines whole, reasons included
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                           "-W", "ignore", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)
    summary = done.stdout.strip().splitlines()[-1]
    counts = {kind.rstrip("s"): int(n)
              for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    return done, counts


def _judged(done, node: str, reason: str) -> bool:
    """pytest's summary line for node (-rfE): a failure, or an error in a fixture, for reason."""
    return any(line.startswith((f"FAILED {node} - ", f"ERROR {node} - ")) and reason in line
               for line in done.stdout.splitlines())


@pytest.fixture
def hidden(tmp_path):
    folder = tmp_path / "hide"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HIDE)
    return folder


@pytest.mark.parametrize("ci", [True, False], ids=["CI=true", "no CI"])
def test_flamby_tests_fail_under_ci_and_skip_otherwise(ci, hidden):
    done, counts = _pytest(NEEDING_FLAMBY, REPO, ci, hidden, [REPO, TESTS])
    if ci:  # a test fails, or errors where a fixture needs FLamby
        judged = counts.get("failed", 0) + counts.get("error", 0)
        assert judged == len(NEEDING_FLAMBY), done.stdout + done.stderr
        for node in NEEDING_FLAMBY:
            assert _judged(done, node, "CI must provide this facility, but: "), (node, done.stdout)
        assert "scripts/install_flamby_test_extras.sh installs FLamby" in done.stdout
    else:
        assert counts == {"skipped": len(NEEDING_FLAMBY)}, done.stdout + done.stderr
    assert "opacus cannot be imported" in done.stdout  # the DP case named what it lacks


@pytest.mark.parametrize("ci", [True, False], ids=["CI=true", "no CI"])
def test_a_test_skipping_on_its_own_fails_under_ci_too(ci, hidden, tmp_path):
    for name, text in PLAIN.items():
        (tmp_path / name).write_text(text)
    # tests/conftest.py as a plugin: the hooks that judge a skip are the repository's own.
    args = ["-p", "conftest", "--continue-on-collection-errors", "--rootdir", str(tmp_path), *PLAIN]
    done, counts = _pytest(args, tmp_path, ci, hidden, [TESTS])
    if ci:
        # A skipif is judged in setup: an error there. Heavy and GPU skips stay skips.
        assert counts == {"failed": 4, "error": 2, "skipped": 2}, done.stdout + done.stderr
        for node in FAILED_UNDER_CI:
            assert _judged(done, node, "CI must run this test (FLamby's path), but it skipped"), \
                (node, done.stdout)
    else:
        assert counts == {"skipped": 8}, done.stdout + done.stderr
