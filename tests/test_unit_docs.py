"""The documentation in step with the code and with itself (no MPI): the configuration page is
the one scripts/config_docs.py writes from the config schema, every relative link in the README and
docs/ reaches an existing file and heading, and the README stays a front door."""
import re
import subprocess
import sys

import pytest

from support.mpi import REPO
from support.scripts import load_script

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _config_docs():
    return load_script("config_docs")


def _prose(text, keep_code=False):
    """The lines of a markdown page outside fenced code blocks, inline code removed (or, with
    keep_code, only its backticks)."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield line.replace("`", "") if keep_code else re.sub(r"`[^`]*`", "", line)


def anchors(text):
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens,
    a repeated heading numbered."""
    seen, result = {}, set()
    for line in _prose(text, keep_code=True):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(page):
    name = page.relative_to(REPO) if page.is_relative_to(REPO) else page.name
    problems = []
    for line in _prose(page.read_text()):
        for target in _LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                problems.append(f"{name}: {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
                problems.append(f"{name}: {target}: no such heading")
    return problems


def test_the_configuration_page_is_generated_from_the_schema():
    page = (REPO / "docs" / "configuration.md").read_text()
    assert page == _config_docs().page(), "docs/configuration.md is stale: run python scripts/config_docs.py --write"


def test_the_generator_notices_a_changed_help_text(monkeypatch):
    from flamby_mpi.config import CommArgs

    docs = _config_docs()
    before = docs.page()
    field = next(f for f in CommArgs.__dataclass_fields__.values() if f.name == "round_timeout_s")
    monkeypatch.setattr(field, "metadata", {**field.metadata, "help": "a changed help text"})
    after = docs.page()
    assert after != before and "| a changed help text |" in after


def test_config_docs_check_fails_on_a_stale_page(tmp_path, monkeypatch):
    docs = _config_docs()
    stale = tmp_path / "configuration.md"
    stale.write_text(docs.page().replace("a rank that hears nothing", "a rank that hears little"))
    monkeypatch.setattr(docs, "PAGE", stale)
    monkeypatch.setattr(docs, "REPO", tmp_path)
    assert docs.main(["--check"]) == 1
    assert docs.main(["--write"]) == 0 and docs.main(["--check"]) == 0
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "config_docs.py")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == docs.page()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_reach_a_file_and_heading(page):
    assert broken_links(page) == []


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading, with commas\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-code-heading-with-commas) [gone](missing.md) [typo](other.md#nope)\n"
                    "```\n[in code](ignored.md)\n```\n[self](#title)\n# Title\n")
    assert [p.split(": ", 1)[1] for p in broken_links(page)] == ["missing.md: no such file",
                                                                 "other.md#nope: no such heading"]


def test_the_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", readme), "dated measurements belong in docs/benchmarks/"
