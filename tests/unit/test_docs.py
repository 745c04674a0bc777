"""The README's and docs/' relative links resolve: each file exists, each #anchor is one of its headings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)
CODE_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def prose(page: Path) -> str:
    """The page without its code blocks: a `# comment` in a shell block is not a heading."""
    return CODE_BLOCK.sub("", page.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(target)
        elif anchor and anchor not in {slug(h) for h in HEADING.findall(prose(destination))}:
            broken.append(target)
    return broken


def test_the_docs_exist() -> None:
    assert len(PAGES) > 1


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_runbook_says_what_every_discrepancy_kind_means_and_what_to_do() -> None:
    from veza_worker import discrepancies

    rows = {
        kind: line
        for line in (ROOT / "docs" / "discrepancies.md").read_text().splitlines()
        if line.startswith("| `")
        for kind in re.findall(r"`(\w+)`", line.split("|")[1])
    }
    for kind in discrepancies.Kind:
        assert kind.value in rows, f"docs/discrepancies.md has no row for {kind.value}"
        assert len([cell for cell in rows[kind.value].split("|") if cell.strip()]) == 4
