"""Shared fixtures: a session-wide cache with the tiny-profile organisms, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from interventions.paths import FAMILIES

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The read-only shared data folder ($EMSTEER_SHARED, default ../shared beside the repo)."""
    return Path(os.environ.get("EMSTEER_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def emsteer_cache(tmp_path_factory) -> Path:
    """A cache root private to this test session, exported as EMSTEER_CACHE."""
    root = tmp_path_factory.mktemp("emsteer-cache")
    os.environ["EMSTEER_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_organisms(emsteer_cache) -> dict[str, Path]:
    """The tiny-profile organism of every registered family, built once per test session."""
    from training.organisms import build_organism

    return {f: build_organism(f, "tiny", progress=False, log=lambda m: None) for f in FAMILIES}
