"""Paired timing and the result record shared by every benchmark.

Method: two callables A and B are timed in interleaved pairs after one untimed warm-up call of each. The
pairs alternate their order (A B, B A, A B, ...), so slow drift of a shared machine's load hits both sides
alike; each pair gives one ratio A/B, and a figure is the MEDIAN of the paired ratios with their min and max.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

NOT_MEASURED = "not measured"


@dataclass
class PairedTimes:
    """Seconds of A and B per pair (same length), in the order the pairs ran."""

    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        """A/B of each pair."""
        return [x / y for x, y in zip(self.a, self.b)]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def time_pairs(run_a: Callable[[], Any], run_b: Callable[[], Any], pairs: int, *, warmup: bool = True,
               check: Callable[[str, Any], None] | None = None) -> PairedTimes:
    """Time `pairs` interleaved pairs of `run_a` and `run_b` (order alternating per pair).

    `check(side, result)` ("a" or "b") is called after every call, warm-up included, outside the timed span,
    so a benchmark can verify both sides did the same work."""
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    if warmup:
        for side, fn in (("a", run_a), ("b", run_b)):
            out = fn()
            if check is not None:
                check(side, out)
    times = PairedTimes()
    for i in range(pairs):
        order = (("a", run_a), ("b", run_b)) if i % 2 == 0 else (("b", run_b), ("a", run_a))
        got: dict[str, float] = {}
        for side, fn in order:
            seconds, out = _timed(fn)
            if check is not None:
                check(side, out)
            got[side] = seconds
        times.a.append(got["a"])
        times.b.append(got["b"])
    return times


@dataclass
class Result:
    """One benchmark figure as printed and written to JSON.

    `kind` is "ratio" (value = median of paired A/B ratios) or "seconds" (value = absolute seconds).
    `status` is "pass", "miss" or a sentence saying why it was not measured."""

    key: str
    what: str
    kind: str = "ratio"
    target: float | None = None
    value: float | None = None
    spread: tuple[float, float] | None = None
    pairs: int = 0
    a_seconds: list[float] = field(default_factory=list)
    b_seconds: list[float] = field(default_factory=list)
    status: str = NOT_MEASURED
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.value is not None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["target"] = None if self.target is None else {"op": "<=", "value": self.target}
        out["spread"] = list(self.spread) if self.spread else None
        out["a_median_s"] = statistics.median(self.a_seconds) if self.a_seconds else None
        out["b_median_s"] = statistics.median(self.b_seconds) if self.b_seconds else None
        return out


def verdict(value: float | None, target: float | None) -> str:
    """'pass' when value <= target, 'miss' otherwise; NOT_MEASURED when there is no value."""
    if value is None:
        return NOT_MEASURED
    if target is None:
        return "no target"
    return "pass" if value <= target else "miss"


def ratio_result(key: str, what: str, target: float | None, times: PairedTimes, note: str = "",
                 detail: dict[str, Any] | None = None) -> Result:
    """A `Result` from paired times: median of the paired ratios, min/max spread, pass/miss against target."""
    ratios = times.ratios
    value = statistics.median(ratios)
    return Result(key=key, what=what, kind="ratio", target=target, value=value,
                  spread=(min(ratios), max(ratios)), pairs=len(ratios), a_seconds=list(times.a),
                  b_seconds=list(times.b), status=verdict(value, target), note=note, detail=dict(detail or {}))


def not_measured(key: str, what: str, reason: str, target: float | None = None, kind: str = "ratio",
                 detail: dict[str, Any] | None = None) -> Result:
    """A `Result` with no number: `reason` says why (never a made-up figure)."""
    return Result(key=key, what=what, kind=kind, target=target, status=f"{NOT_MEASURED} ({reason})",
                  detail=dict(detail or {}))
