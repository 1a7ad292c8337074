"""The docs site builds cleanly, and the README stays a short front door to it.

`mkdocs build --strict` fails on a link to a missing page or anchor and on a page left out of the nav
(mkdocs.yml's `validation`); it also imports the click commands for the generated CLI reference. The
README is not part of the site, so its links into docs/ are checked here against the built pages.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"
README_MAX_LINES = 260
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def nav_pages(nav: list) -> list[str]:
    """The page files of a mkdocs `nav`, in order, sections flattened."""
    pages = []
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            pages.extend(nav_pages(value) if isinstance(value, list) else [value])
    return pages


def markdown_links(text: str) -> list[tuple[str, str]]:
    """(path, anchor) of each relative link in markdown text; absolute URLs left out."""
    links = []
    for match in LINK.finditer(text):
        target = match.group("target")
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        path, _, anchor = target.partition("#")
        links.append((path, anchor))
    return links


def reachable_from(start: str) -> set[str]:
    """The docs pages reachable from docs/<start> by following links between pages."""
    seen, todo = set(), [start]
    while todo:
        page = todo.pop()
        if page in seen or not (DOCS / page).is_file():
            continue
        seen.add(page)
        todo.extend(path for path, _ in markdown_links((DOCS / page).read_text()) if path.endswith(".md"))
    return seen


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("mkdocs") is None:
        message = "mkdocs is not installed (the dev extra installs it: bash scripts/setup.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_the_site_builds_strictly(site: Path) -> None:
    assert (site / "index.html").is_file()
    cli = (site / "cli" / "index.html").read_text()
    for command in ("restar predict", "restar registry compare", "restar-promote status"):
        assert command in cli, f"the generated CLI reference lacks {command!r}"


def test_the_readme_is_short() -> None:
    lines = len((REPO_ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_every_page_is_linked_from_the_readme_or_reachable_from_the_home_page() -> None:
    nav = nav_pages(yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())["nav"])
    assert nav and "index.md" in nav
    from_readme = {
        path.removeprefix("docs/") for path, _ in markdown_links((REPO_ROOT / "README.md").read_text())
    }
    unlinked = [page for page in nav if page not in from_readme | reachable_from("index.md")]
    assert not unlinked, f"pages neither linked from README.md nor reachable from docs/index.md: {unlinked}"
    assert sorted(nav) == sorted(path.name for path in DOCS.glob("*.md")), "a docs page is not in the nav"


def test_the_readmes_links_into_the_docs_resolve(site: Path) -> None:
    broken = []
    for path, anchor in markdown_links((REPO_ROOT / "README.md").read_text()):
        if not path.startswith("docs/"):
            continue
        page = path.removeprefix("docs/").removesuffix(".md")
        built = site / ("" if page == "index" else page) / "index.html"
        if not (REPO_ROOT / path).is_file() or not built.is_file():
            broken.append(path)
        elif anchor and f'id="{anchor}"' not in built.read_text():
            broken.append(f"{path}#{anchor}")
    assert not broken, f"README.md links to missing docs pages or anchors: {broken}"
