"""docs/architecture.md matches the tree: every module of the three packages is named in its map, and every module
path it names exists (so the "where things go" map cannot drift from the code unnoticed)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
PACKAGES = ("interventions", "evals", "training")


def _named_paths() -> set[str]:
    return set(re.findall(r"`((?:interventions|evals|training)/[\w/]+\.py)`", DOC.read_text()))


def _modules() -> set[str]:
    return {str(p.relative_to(REPO)) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def test_every_module_is_on_the_map():
    assert sorted(_modules() - _named_paths()) == []


def test_every_module_on_the_map_exists():
    assert sorted(p for p in _named_paths() if "<name>" not in p and not (REPO / p).is_file()) == []
