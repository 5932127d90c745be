"""The README and docs stand alone: every relative link resolves inside the repository, and
nothing points at files outside it (a clone has no machine paths or sibling folders)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(text: str) -> list[str]:
    links = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, https:, mailto:, in-page anchors
        links.append(target.split("#", 1)[0])
    return [t for t in links if t]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in _relative_links(doc.read_text()):
        path = (doc.parent / target).resolve()
        if not path.exists():
            broken.append(target)
        elif ROOT not in path.parents and path != ROOT:
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{doc.name}: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_paths_outside_the_project(doc: Path) -> None:
    text = doc.read_text()
    assert not re.search(r"/work/|\.\./shared|shared/docs", text), f"{doc.name} points outside the project"


def test_the_link_checker_catches_a_broken_link(tmp_path: Path) -> None:
    # The checks above would pass vacuously if no link were ever found: prove the pattern bites.
    assert _relative_links("see [spec](docs/spec.md#parity) and [web](https://x.org) [a](#b)") == ["docs/spec.md"]
    assert any("spec.md" in t for t in _relative_links((ROOT / "README.md").read_text()))


#: Documents the docs cite by name that live in other repositories (named with them) or are
#: written by a script at run time: not files of this one.
UPSTREAM_DOCS = {"operators.md", "Changelog.md", "CHANGELOG.md", "bench.md"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_markdown_file_named_is_in_the_repository(doc: Path) -> None:
    # A note file of one machine (say `tensorrt-notes.md`) named as a source makes the docs
    # unreadable from a clone: every `*.md` named must be here, or a known upstream document.
    here = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts and ".git" not in p.parts}
    named = set(re.findall(r"[A-Za-z0-9_.-]+\.md\b", doc.read_text()))
    assert not named - here - UPSTREAM_DOCS, f"{doc.name} names {sorted(named - here - UPSTREAM_DOCS)}"
