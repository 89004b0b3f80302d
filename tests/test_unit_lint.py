"""Every `# noqa` names a rule that `ruff check .` runs. ruff's RUF100 (selected in pyproject.toml)
fails on a noqa that silences nothing, but says nothing of a code ruff does not know (flake8's
B902 silenced nothing here for months), so this test asks ruff about each code."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOQA = re.compile(r"#\s*noqa:\s*([A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*)")


def _noqa_codes():
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    codes = {}
    for name in tracked:
        for number, line in enumerate((REPO / name).read_text().splitlines(), 1):
            for match in NOQA.finditer(line):
                for code in re.split(r"\s*,\s*", match.group(1)):
                    codes.setdefault(code, f"{name}:{number}")
    return codes


def test_every_noqa_names_a_rule_ruff_knows_and_runs():
    selected = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]["select"]
    codes = _noqa_codes()
    assert codes  # the scan finds the ones there are
    for code, where in sorted(codes.items()):
        known = subprocess.run([sys.executable, "-m", "ruff", "rule", code], capture_output=True, text=True,
                               timeout=60)
        assert known.returncode == 0, f"{where}: noqa {code} is no rule of ruff's"
        assert any(code == family or re.fullmatch(rf"{family}[0-9]+", code) for family in selected), \
            f"{where}: noqa {code} names a rule ruff check does not run (select: {selected})"
