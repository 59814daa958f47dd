"""Code-spillover rates of recorded answers (CSV or JSONL), pooled and per group, with 95% intervals.

Backs the CLI command `emsteer score-responses FILE --column C [--by G] [--out rows.jsonl]`.
Missing answers (empty cells, JSON null, absent keys) are counted separately and left out of every
denominator. Rates carry a Wilson score interval. `out` gets one JSON object per input row,
`{"row": i, "is_code": true|false|null}` with `i` the 0-based data row (CSV rows after the header;
JSONL non-blank lines), written atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from evals.code_detector import is_code
from interventions.atomic import write_text_atomic
from interventions.errors import EmsteerError
from interventions.jsonl import read_jsonl_objects

__all__ = ["score_responses", "format_table", "wilson_interval", "read_table"]

Z95 = 1.959963984540054  # two-sided 95% normal quantile
MISSING_GROUP = "(missing)"
_CSV_SUFFIXES = {".csv"}
_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; (nan, nan) when n == 0."""
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = (z / denom) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends, free of rounding at k = 0 or n
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows = [obj for _, obj in read_jsonl_objects(path)]
    if not rows:
        raise EmsteerError(f"{path}: empty file (no JSONL records)")
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return pd.DataFrame.from_records(rows, columns=list(columns))


def read_table(path: Path | str) -> pd.DataFrame:
    """Read a CSV or JSONL file of answers, with EmsteerError for a missing, empty or unknown file."""
    path = Path(path)
    if not path.is_file():
        raise EmsteerError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        try:
            # Only truly empty cells are missing: an answer reading "None" or "NA" is still an answer.
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        except pd.errors.EmptyDataError:
            raise EmsteerError(f"{path}: empty file") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise EmsteerError(f"{path}: unreadable CSV: {str(exc).strip().splitlines()[0]}") from None
        if df.empty:
            raise EmsteerError(f"{path}: empty file (a header but no rows)")
        return df
    if suffix in _JSONL_SUFFIXES:
        return _read_jsonl(path)
    raise EmsteerError(f"{path}: unknown suffix {path.suffix or '(none)'!r}; use .csv or .jsonl")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _stats(flags: list[bool | None]) -> dict[str, Any]:
    scored = [f for f in flags if f is not None]
    n, k = len(scored), sum(scored)
    low, high = wilson_interval(k, n)
    return {
        "n": n,
        "k": k,
        "n_missing": len(flags) - n,
        "rate": (k / n) if n else None,
        "ci_low": low if n else None,
        "ci_high": high if n else None,
    }


def _group_key(value: Any) -> str:
    if _is_missing(value):
        return MISSING_GROUP
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _write_rows_atomic(out: Path, flags: list[bool | None]) -> None:
    write_text_atomic(out, "".join(json.dumps({"row": i, "is_code": flag}) + "\n" for i, flag in enumerate(flags)))


def score_responses(path: Path, column: str, by: str | None = None, out: Path | None = None) -> dict:
    """Apply `is_code` to `column` of a CSV/JSONL file; return pooled and per-group spillover rates.

    Result: {"path", "column", "by", "n_rows", "pooled": stats, "groups": {group: stats}} where stats
    is {"n", "k", "n_missing", "rate", "ci_low", "ci_high"} (Wilson 95%; rate and bounds None when
    n == 0). `groups` is empty without `by`; rows whose group value is missing form "(missing)".
    """
    path = Path(path)
    df = read_table(path)
    available = [str(c) for c in df.columns]
    if column not in df.columns:
        raise EmsteerError(f"{path}: unknown column {column!r}; available columns: {', '.join(available)}")
    if by is not None and by not in df.columns:
        raise EmsteerError(f"{path}: unknown --by column {by!r}; available columns: {', '.join(available)}")

    flags: list[bool | None] = [
        None if _is_missing(v) else is_code(v if isinstance(v, str) else str(v)) for v in df[column].tolist()
    ]
    groups: dict[str, dict[str, Any]] = {}
    if by is not None:
        members: dict[str, list[bool | None]] = {}
        for key, flag in zip(df[by].tolist(), flags):
            members.setdefault(_group_key(key), []).append(flag)
        groups = {key: _stats(members[key]) for key in sorted(members)}
    if out is not None:
        _write_rows_atomic(Path(out), flags)
    return {
        "path": str(path),
        "column": column,
        "by": by,
        "n_rows": len(flags),
        "pooled": _stats(flags),
        "groups": groups,
    }


def _fmt_rate(stats: dict[str, Any]) -> tuple[str, str]:
    if stats["rate"] is None:
        return "-", "-"
    return f"{stats['rate']:.3f}", f"[{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"


def format_table(result: dict) -> str:
    """Render a `score_responses` result as a plain-text table (groups, then the pooled row)."""
    rows = [(name, st) for name, st in result.get("groups", {}).items()] + [("pooled", result["pooled"])]
    header = (result.get("by") or "group", "n", "code", "rate", "95% CI", "missing")
    body = [(name, str(st["n"]), str(st["k"]), *_fmt_rate(st), str(st["n_missing"])) for name, st in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    title = f"code spillover in {result['path']} (column {result['column']!r})"
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(header), sep, *(line(r) for r in body)])
