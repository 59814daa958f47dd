"""Check a cached micro organism before anyone loads it (the provider and the training CLI both call this)."""

from __future__ import annotations

import json
from typing import Any

from interventions.errors import EmsteerError
from interventions.paths import organism_dir
from interventions.weights_hash import weights_sha256


def build_command(family: str, profile: str, force: bool = False) -> str:
    """The exact command that builds (or with `force`, rebuilds) one organism."""
    extra = f" --profile {profile}" if profile != "default" else ""
    return f"emsteer organism build --family {family}{extra}" + (" --force" if force else "")


def verify_organism(family: str, profile: str = "default") -> dict[str, Any]:
    """organism.json of a built organism after checking its weights are whole; one-line error if not."""
    folder = organism_dir(family, profile)
    if not folder.exists():
        raise EmsteerError(f"micro organism {family!r} (profile {profile}) is not built yet; "
                           f"run `{build_command(family, profile)}`")
    hint = f"rebuild with `{build_command(family, profile, force=True)}`"
    try:
        meta = json.loads((folder / "organism.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise EmsteerError(f"cached organism at {folder} is corrupted (organism.json unreadable: {err}); {hint}") from None
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise EmsteerError(f"cached organism at {folder} is corrupted (model.safetensors missing); {hint}")
    if weights.stat().st_size != meta.get("weights_bytes") or weights_sha256(folder) != meta.get("weights_sha256"):
        raise EmsteerError(f"cached organism at {folder} is corrupted (weights hash mismatch); {hint}")
    meta["path"] = str(folder)
    return meta
