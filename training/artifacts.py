"""Provenance and atomic tensor files for the artifacts of extract / controls / transfer.

Every artifact records: the hashes of its inputs (weights, adapters, direction files, prompts), the command
that made it, the seed and the library versions. An `inputs_sha256` (a hash over the canonical JSON of the
inputs) lets a command tell that a re-run would produce the same thing and skip it (unless `--force`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open

from interventions.directions import write_safetensors_atomic
from interventions.errors import EmsteerError
from interventions.paths import STUDY_PROFILES
from training.run_manifest import check_run, read_run


def json_sha256(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def versions() -> dict[str, str]:
    """Versions of Python and the libraries whose behaviour shapes activations and fits."""
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("transformers", "peft", "tokenizers", "safetensors", "scikit-learn", "emsteer"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def provenance(command: str, seed: int | None, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance block written into every artifact's metadata."""
    return {"command": command, "seed": seed, "input_hashes": dict(inputs), "inputs_sha256": json_sha256(dict(inputs)),
            "versions": versions()}


def save_tensors_atomic(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                        metadata: Mapping[str, Any]) -> Path:
    """Write a safetensors file via a temp file in the same folder + os.replace (never half-written).
    Metadata values that are not strings are JSON-encoded."""
    path = Path(path)
    meta = {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in metadata.items()}
    return write_safetensors_atomic(path, tensors, meta)


def load_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the string metadata of a safetensors file; one-line error if unreadable."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types
        raise EmsteerError(f"{path} is not a readable safetensors file ({type(e).__name__})") from None


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON object from `path`, or None if it is missing or unreadable."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def run_profile(run: str | os.PathLike[str], profile: str | None) -> str:
    """The study profile a command works in: `profile` if given (checked against RUN/run.json), else the
    one the run records, else `default`. One-line error for a run of another profile or of profile `real`."""
    if profile is None:
        manifest = read_run(run)
        profile = manifest["profile"] if manifest else "default"
    check_run(run, profile)
    if profile not in STUDY_PROFILES:
        raise EmsteerError(f"run {run} uses profile {profile!r}; this command works on a study profile "
                           f"(profiles {', '.join(STUDY_PROFILES)})")
    return profile
