"""The spillover task's prompts: the micro organisms' held-out prompts, or a JSONL/CSV/Betley-YAML file, as Inspect
samples carrying group (general | coding), category and format; and the calibration/test halves."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from inspect_ai.dataset import Sample
from inspect_ai.model import ChatMessageSystem, ChatMessageUser

from evals.betley import question_format, read_questions, sample_id
from interventions.errors import EmsteerError
from interventions.jsonl import read_jsonl_objects
from interventions.paths import check_study_profile, heldout_prompts_path, prompts_profile

GROUPS: tuple[str, ...] = ("general", "coding")
SPLITS: tuple[str, ...] = ("all", "calibration", "test")

# --- dataset -------------------------------------------------------------------------------------


def _sample(prompt: str, sid: str, group: str, category: str, fmt: str, system: str | None = None) -> Sample:
    messages = [ChatMessageSystem(content=system), ChatMessageUser(content=prompt)] if system else None
    return Sample(
        input=messages if messages else prompt,
        id=sid,
        metadata={"group": group, "category": category, "format": fmt},
    )


def _rows_to_samples(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> list[Sample]:
    samples: list[Sample] = []
    for n, (where, row) in enumerate(rows, start=1):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise EmsteerError(f"{path}: row {where} has no 'prompt'")
        group = str(row.get("group") or "general").strip()
        if group not in GROUPS:
            raise EmsteerError(f"{path}: row {where}: unknown group {group!r}; use one of: {', '.join(GROUPS)}")
        category = str(row.get("category") or group).strip()
        fmt = str(row.get("format") or "plain").strip()
        sid = str(row.get("id") or f"p-{n:04d}").strip()
        system = row.get("system") if isinstance(row.get("system"), str) and row.get("system") else None
        samples.append(_sample(prompt, sid, group, category, fmt, system))
    return samples


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    return read_jsonl_objects(path)


def _read_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            cols = ", ".join(reader.fieldnames or []) or "(none)"
            raise EmsteerError(f"{path}: no 'prompt' column; available columns: {cols}")
        return [(i, dict(row)) for i, row in enumerate(reader, start=2)]


def _read_betley_yaml(path: Path) -> list[Sample]:
    samples: list[Sample] = []
    for q in read_questions(path):
        for j, text in enumerate(q.paraphrases):
            sid = sample_id(q.id, j, len(q.paraphrases))
            samples.append(_sample(text, sid, "general", q.id, question_format(q.id), q.system))
    return samples


def load_prompts(path: Path | str) -> list[Sample]:
    """Read prompts from JSONL, CSV or a Betley-format YAML into Samples (metadata: group, category, format)."""
    path = Path(path)
    if not path.is_file():
        raise EmsteerError(f"{path}: prompts file not found")
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json", ".ndjson"}:
        samples = _rows_to_samples(path, _read_jsonl(path))
    elif suffix == ".csv":
        samples = _rows_to_samples(path, _read_csv(path))
    elif suffix in {".yaml", ".yml"}:
        samples = _read_betley_yaml(path)
    else:
        raise EmsteerError(f"{path}: unknown prompts suffix {path.suffix or '(none)'!r}; use .jsonl, .csv or .yaml")
    if not samples:
        raise EmsteerError(f"{path}: no prompts")
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise EmsteerError(f"{path}: duplicate prompt id {s.id!r}")
        seen.add(str(s.id))
    return samples


def split_samples(samples: list[Sample], split: str) -> list[Sample]:
    """The `calibration` or `test` half of the prompts (or `all`): within each group, samples sorted by id
    alternate between the halves, so both halves hold every group and the split never depends on file order.
    Alpha is calibrated on one half and the sweep's numbers come from the other."""
    if split not in SPLITS:
        raise EmsteerError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if split == "all":
        return samples
    keep: set[str] = set()
    for group in sorted({str((s.metadata or {}).get("group")) for s in samples}):
        ids = sorted(str(s.id) for s in samples if str((s.metadata or {}).get("group")) == group)
        keep.update(ids[(0 if split == "calibration" else 1)::2])
    return [s for s in samples if str(s.id) in keep]


def default_prompts(profile: str) -> Path:
    path = heldout_prompts_path(check_study_profile(profile))
    if not path.is_file():
        corpus = prompts_profile(profile)
        raise EmsteerError(
            f"held-out prompts for profile {profile!r} not found at {path}; "
            f"run `emsteer organism build --profile {corpus}` first")
    return path
