"""The run manifest `RUN/run.json`: which profile a run directory belongs to (a run never mixes profiles),
plus what has been put in it so far (models per family, adapters).

    check_run(run, profile)   read-only: the manifest, or None for a run not started yet; one-line error
                              when RUN belongs to another profile or is unreadable
    ensure_run(run, profile)  the same, creating RUN and its manifest on first use
    update_run(run, change)   apply `change(manifest)` under a file lock and write it back atomically

Commands call `check_run` while validating their input (so bad input leaves nothing behind) and
`ensure_run` once they are about to write.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from interventions.errors import EmsteerError
from interventions.paths import STUDY_PROFILES
from interventions.run_layout import run_manifest_path
from training.atomic import ensure_writable_dir, write_json_atomic

# Micro and pretrained study profiles, plus `real` (hub or local models, finetuned with the reference recipe).
RUN_PROFILES: tuple[str, ...] = tuple(STUDY_PROFILES) + ("real",)
MANIFEST_VERSION = 1


def check_run_profile(profile: str) -> str:
    """Return `profile` if a run may use it, else a one-line error listing the valid ones."""
    if profile not in RUN_PROFILES:
        raise EmsteerError(f"unknown profile {profile!r}; choose one of: {', '.join(RUN_PROFILES)}")
    return profile


def read_run(run: str | Path) -> dict[str, Any] | None:
    """The manifest of `run`, or None if it has none; one-line error if it exists but is unreadable."""
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise EmsteerError(f"run directory {run} is a file, not a directory")
    path = run_manifest_path(run)
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise EmsteerError(f"run manifest {path} is unreadable ({err}); move the run directory aside") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("profile"), str):
        raise EmsteerError(f"run manifest {path} has no profile; move the run directory aside")
    return manifest


def require_run(run: str | Path) -> dict[str, Any]:
    """The manifest of an existing run; a one-line error naming the missing run (and how runs are made) when `run`
    is not one, so commands that read a run never talk about organisms or hub ids for a mistyped path."""
    manifest = read_run(run)
    if manifest is None:
        what = "does not exist" if not Path(run).exists() else f"has no {run_manifest_path(run).name}"
        raise EmsteerError(f"no run at {run} ({what}); a run is made by `emsteer finetune --run {run} ...` or "
                           f"`emsteer reproduce --out {run}`")
    return manifest


def check_run(run: str | Path, profile: str) -> dict[str, Any] | None:
    """Validate (without writing) that `run` is new or belongs to `profile`; returns its manifest or None."""
    check_run_profile(profile)
    manifest = read_run(run)
    if manifest is not None and manifest["profile"] != profile:
        raise EmsteerError(f"run directory {run} belongs to profile {manifest['profile']!r}, not {profile!r}; "
                           f"use another --run or --profile {manifest['profile']}")
    return manifest


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _locked(run: Path) -> Iterator[None]:
    with open(run / ".run.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_run(run: str | Path, profile: str) -> dict[str, Any]:
    """The manifest of `run`, creating RUN and `RUN/run.json` (recording `profile`) on first use.

    One-line EmsteerError when RUN already belongs to another profile."""
    run = Path(run)
    manifest = check_run(run, profile)
    if manifest is not None:
        return manifest
    ensure_writable_dir(run)
    with _locked(run):
        manifest = check_run(run, profile)  # another process may have created it meanwhile
        if manifest is None:
            manifest = {"profile": profile, "created": _now(), "manifest_version": MANIFEST_VERSION}
            write_json_atomic(run_manifest_path(run), manifest)
    return manifest


def update_run(run: str | Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply `change` to the manifest in place (under a lock) and write it back atomically."""
    run = Path(run)
    with _locked(run):
        manifest = read_run(run)
        if manifest is None:
            raise EmsteerError(f"{run} has no run manifest; call ensure_run first")
        change(manifest)
        manifest["updated"] = _now()
        write_json_atomic(run_manifest_path(run), manifest)
    return manifest
