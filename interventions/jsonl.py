"""Read JSONL files of objects, with errors that name the file and the line (one implementation for evals and
training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from interventions.errors import EmsteerError

__all__ = ["read_jsonl_objects"]


def read_jsonl_objects(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; one-line error for bad JSON, a non-object or bad UTF-8."""
    path = Path(path)
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EmsteerError(f"{path}: malformed JSONL line {lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise EmsteerError(f"{path}: malformed JSONL line {lineno}: expected a JSON object, "
                                       f"got {type(obj).__name__}")
                rows.append((lineno, obj))
    except UnicodeDecodeError:
        raise EmsteerError(f"{path}: not UTF-8 text") from None
    return rows
