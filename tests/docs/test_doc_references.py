"""What the docs name must exist: repository paths (`vlmsearch/storage/where_check.py`,
`tests/test_server.py`, ...) and Python names (`vlmsearch.server.app.create_app`). Modules
move; a page that still names the old place fails here instead of misleading a reader."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# a code span that starts with a path into the repository
PATH_SPAN = re.compile(r"`((?:vlmsearch|tests|benchmarks|scripts|\.ci)/[^`\s]*)`")
DOTTED = re.compile(r"(?<![\w./-])vlmsearch(?:\.[A-Za-z_]\w*)+")
# entry-point group names, not modules
NOT_MODULES = {"vlmsearch.encoders", "vlmsearch.unimodal", "vlmsearch.rerankers"}


def _ids(pages: list[Path]) -> list[str]:
    return [p.name for p in pages]


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_named_paths_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    missing = []
    for rel in sorted(set(PATH_SPAN.findall(text))):
        if not (any(REPO.glob(rel)) if "*" in rel else (REPO / rel).exists()):
            missing.append(rel)
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_named_python_objects_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    names = sorted(set(DOTTED.findall(text)) - NOT_MODULES)
    missing = [n for n in names if not _resolves(n)]
    assert not missing, f"{page.name} names Python objects that do not exist: {missing}"


def test_readme_links_resolve() -> None:
    """mkdocs checks the links inside docs/; the README (outside it) is checked here."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:", t)]
    assert local, "the README links to no docs page"
    missing = [t for t in local if t and not (REPO / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
