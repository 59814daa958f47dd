"""Rates and changes with 95% bootstrap intervals over prompts, and over seeds where there are several.

A result is a list of *units* (one per seed, or per random draw), each an array of per-prompt values. The
bootstrap resamples units with replacement, then prompts within each unit, and takes the mean of all
resampled values; the interval is the 2.5 and 97.5 percentiles. With one unit it is the plain bootstrap over
prompts. Changes are paired: per unit, the steered and unsteered values of the same prompt are subtracted first.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["bootstrap_mean", "rate_summary", "paired_change"]

N_BOOT = 2000


def bootstrap_mean(units: Sequence[np.ndarray], *, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """Mean of all values and its hierarchical-bootstrap 95% interval (NaN when there are no values)."""
    units = [np.asarray(u, dtype=float) for u in units if len(u)]
    if not units:
        return float("nan"), float("nan"), float("nan")
    point = float(np.mean(np.concatenate(units)))
    rng = np.random.default_rng(seed)
    k = len(units)
    picked = rng.integers(0, k, (n_boot, k))  # which unit fills each of the k slots of each bootstrap draw
    sizes = np.array([len(u) for u in units], dtype=float)
    # sums[i][b, j]: the sum of a fresh prompt resample of unit i, for slot j of draw b (vectorised)
    sums = [u[rng.integers(0, len(u), (n_boot, k, len(u)))].sum(axis=2) for u in units]
    total = np.zeros(n_boot)
    count = np.zeros(n_boot)
    for i in range(k):
        chosen = picked == i
        total += np.where(chosen, sums[i], 0.0).sum(axis=1)
        count += chosen.sum(axis=1) * sizes[i]
    stats = total / count
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return point, float(lo), float(hi)


def _clean(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


def rate_summary(units: Sequence[np.ndarray], *, seed: int = 0) -> dict[str, Any]:
    """{"rate", "ci95", "n", "n_units"} of per-prompt 0/1 values."""
    point, lo, hi = bootstrap_mean(units, seed=seed)
    return {"rate": _clean(point), "ci95": [_clean(lo), _clean(hi)], "n": int(sum(len(u) for u in units)),
            "n_units": len([u for u in units if len(u)])}


def paired_change(pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, seed: int = 0) -> dict[str, Any]:
    """Change in points (steered - unsteered) over units of prompt-aligned pairs, with its 95% interval."""
    diffs = [np.asarray(s, float) - np.asarray(u, float) for s, u in pairs if len(s)]
    point, lo, hi = bootstrap_mean(diffs, seed=seed)
    return {"change_points": _clean(point * 100), "ci95": [_clean(lo * 100), _clean(hi * 100)],
            "n_prompts": int(sum(len(d) for d in diffs)), "n_units": len(diffs)}
