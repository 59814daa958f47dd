"""How the extraction prompts are split: directions are fit on one half, separation and the audit's
calibration are measured on the other (one definition, used by extraction and audit alike)."""

from __future__ import annotations


def split_halves(n: int) -> tuple[list[int], list[int]]:
    """Fit = the first half of the (already shuffled) prompts, held-out = the rest."""
    half = n // 2
    return list(range(half)), list(range(half, n))
