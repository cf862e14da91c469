"""The user documentation: the README stays short, every relative link (and its #anchor) finds
its target, and no page or notebook speaks of how the project was built instead of how to use
it."""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_MAX_LINES = 200


def user_pages() -> list[Path]:
    """Every markdown page written for users."""
    pages = [README, REPO / "CHANGELOG.md", REPO / "data" / "README.md",
             REPO / "results" / "README.md", REPO / "benchmarks" / "results" / "README.md",
             *sorted((REPO / "docs").glob("*.md"))]
    return [p for p in pages if p.exists()]


# Words about the building of the project, not its use: issue numbers, rounds of work, the
# builders and their machines, restructures. History goes to CHANGELOG.md, in a user's terms.
BUILD_HISTORY = re.compile(
    r"\bissues? #?[0-9]+|\bas the issue\b|\bround (one|two|three)\b|this restructure"
    r"|\bsessions? that\b|\bthe builders?\b|\bour machine|\blocal wheel store"
    r"|this project's (machine|[0-9]+-core)|the project's machines?"
    r"|shared with other (jobs|agents)|\bother agents\b|no GPU was (available|lent)"
    r"|in earlier runs", re.IGNORECASE)


def build_history(text: str) -> list[str]:
    return [m.group(0) for m in BUILD_HISTORY.finditer(text)]


def without_code_blocks(text: str) -> str:
    """The page with fenced code blocks blanked out (their lines kept, for line numbers)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    """The targets of the page's markdown links that point into the repository."""
    text = re.sub(r"`[^`\n]*`", "", without_code_blocks(page.read_text()))
    return [t for t in LINK.findall(text)
            if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to
    hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in without_code_blocks(page.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading '{anchor}' in {dest.name})")
    return broken


def test_the_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it at most {README_MAX_LINES} and move detail "
        "to docs/")


def test_the_readme_indexes_existing_docs_pages():
    pages = [t.partition("#")[0] for t in relative_links(README)
             if t.startswith("docs/") and t.partition("#")[0].endswith(".md")]
    assert pages, "README.md links no docs/ page"
    missing = sorted({p for p in pages if not (REPO / p).exists()})
    assert not missing, missing


@pytest.mark.parametrize("page", user_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_finds_its_target(page):
    assert not broken_links(page), broken_links(page)


@pytest.mark.parametrize("page", user_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_page_speaks_of_how_the_project_was_built(page):
    found = [(n, hit) for n, line in enumerate(page.read_text().splitlines(), 1)
             for hit in build_history(line)]
    assert not found, f"{page.relative_to(REPO)}: build history at (line, words) {found}"


@pytest.mark.parametrize("notebook", sorted((REPO / "notebooks").glob("*.ipynb")),
                         ids=lambda p: p.name)
def test_no_notebook_speaks_of_how_the_project_was_built(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    found = [(n, hit) for n, cell in enumerate(cells)
             for hit in build_history("".join(cell["source"]))]
    assert not found, f"{notebook.name}: build history at (cell, words) {found}"


def test_the_checks_can_fail(tmp_path):
    """A planted broken link, a missing anchor and build-history words are all found."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Two words\n")
    page = tmp_path / "README.md"
    page.write_text("# Read me\n[ok](docs/a.md) [ok](docs/a.md#two-words) [web](https://example.org)\n"
                    "`[in code](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n"
                    "[gone](docs/b.md) [bad anchor](docs/a.md#three-words) [self](#read-me)\n")
    assert broken_links(page) == ["docs/b.md (no such file)",
                                  "docs/a.md#three-words (no heading 'three-words' in a.md)"]
    for text in ("as issue 22 measured it", "see Issue #7", "Round one chose batch 32",
                 "API changes (this restructure)", "the sessions that built this",
                 "the builders' shared machine", "wheels from a local wheel store",
                 "on this project's 2-core machine", "no GPU was available to measure it"):
        assert build_history(text), text
    for text in ("a round number", "issues and pull requests", "the build folder",
                 "two rounds of rounding", "the machine you run it on"):
        assert not build_history(text), text
