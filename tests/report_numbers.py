"""The numbers of a report summary as flat `path -> value` pairs, for before/after comparisons of a refactor."""

from __future__ import annotations

import math
from typing import Any

UNTIMED_EXCLUDED = ("seconds_per_checkpoint",)  # wall-clock figures differ run to run by design


def report_numbers(summary: dict[str, Any]) -> dict[str, float | bool]:
    """Every numeric or boolean leaf of `summary` keyed by its JSON path, wall-clock figures left out."""
    out: dict[str, float | bool] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}/{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        elif isinstance(value, (bool, int, float)) and not path.endswith(UNTIMED_EXCLUDED):
            out[path] = value

    walk(summary, "")
    return out


def differences(expected: dict[str, Any], actual: dict[str, Any], rel: float = 1e-4, abs_: float = 1e-6) -> list[str]:
    """One line per path missing on either side or whose value differs beyond float tolerance."""
    lines = [f"missing: {p}" for p in sorted(set(expected) - set(actual))]
    lines += [f"new: {p}" for p in sorted(set(actual) - set(expected))]
    for path in sorted(set(expected) & set(actual)):
        a, b = expected[path], actual[path]
        if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
            same = a == b
        else:
            same = math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_) or (math.isnan(a) and math.isnan(b))
        if not same:
            lines.append(f"{path}: expected {a!r}, got {b!r}")
    return lines
