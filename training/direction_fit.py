"""The maths of direction extraction, pure functions on activation tensors (tested on synthetic data).

- `diff_in_means(pos, neg)`: mean(pos) - mean(neg) per layer (float64 accumulation, fp32 result);
- `separation(...)`: project held-out examples on unit(direction); the threshold is the midpoint of the FIT
  class means' projections; reports the held-out accuracy of that threshold and the AUROC
  (`sklearn.metrics.roc_auc_score`), plus the fit accuracy;
- `fit_directions(...)`: both on a fit / held-out split, with R per layer (the mean residual norm, the unit of
  alpha) from the per-example token norms it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from interventions.errors import EmsteerError

__all__ = ["MIN_PER_CLASS", "DirectionFit", "check_class_sizes", "cosine", "diff_in_means", "fit_directions",
           "separation"]

MIN_PER_CLASS = 4          # per class, in EACH of the fit and held-out halves


def _as3(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim not in (2, 3):
        raise EmsteerError(f"{what} must be [n, d] or [n, n_layers, d], got {getattr(x, 'shape', type(x).__name__)}")
    x = x.detach().cpu()
    x = x.unsqueeze(1) if x.ndim == 2 else x
    if not bool(torch.isfinite(x).all()):
        raise EmsteerError(f"{what} contain NaN/inf values; nothing written")
    return x


def check_class_sizes(sizes: dict[str, int], minimum: int = MIN_PER_CLASS, hint: str = "") -> None:
    """One-line error when any (class, split) has fewer than `minimum` examples."""
    short = {k: v for k, v in sizes.items() if v < minimum}
    if short:
        have = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise EmsteerError(f"too few examples per class: need at least {minimum} of each class in each split, have {have}"
                           + (f"; {hint}" if hint else ""))


def diff_in_means(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """mean(pos) - mean(neg): [n_layers, d] fp32 for [n, n_layers, d] inputs ([1, d] for [n, d])."""
    pos, neg = _as3(pos, "positive-class activations"), _as3(neg, "negative-class activations")
    if pos.shape[1:] != neg.shape[1:]:
        raise EmsteerError(f"class activations have mismatched shapes {tuple(pos.shape[1:])} vs {tuple(neg.shape[1:])}")
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise EmsteerError("too few examples per class: a class is empty")
    return (pos.double().mean(0) - neg.double().mean(0)).float()


def separation(pos_fit: torch.Tensor, neg_fit: torch.Tensor, pos_test: torch.Tensor,
               neg_test: torch.Tensor) -> list[dict[str, float]]:
    """Per layer: the held-out accuracy of the midpoint threshold and the AUROC of the projection on the fit
    direction (class 1 = positive), plus fit accuracy, the threshold and the held-out class mean projections.

    Secondary (not the headline): `accuracy_spread_weighted`, the held-out accuracy of the threshold lying equally
    many fit-set standard deviations from both class means; it differs from the midpoint when one class is much
    more spread along the direction than the other (e.g. a finetune whose answers vary far more than the base's)."""
    from sklearn.metrics import roc_auc_score  # deferred: ~1.8 s; `emsteer extract` on bad input needs none

    pos_fit, neg_fit = _as3(pos_fit, "positive fit activations"), _as3(neg_fit, "negative fit activations")
    pos_test, neg_test = _as3(pos_test, "positive held-out activations"), _as3(neg_test, "negative held-out activations")
    d = diff_in_means(pos_fit, neg_fit).double()
    out = []
    for layer in range(d.shape[0]):
        norm = float(d[layer].norm())
        if norm == 0.0:  # e.g. below the only layer a LoRA adapter changes, at the last prompt token
            out.append({"accuracy": 0.5, "auroc": 0.5, "fit_accuracy": 0.5, "threshold": None,
                        "accuracy_spread_weighted": 0.5, "threshold_spread_weighted": None,
                        "heldout_mean_projection_pos": None, "heldout_mean_projection_neg": None,
                        "no_direction": "the two classes' activations are identical at this layer"})
            continue
        u = d[layer] / norm
        mid = 0.5 * float((pos_fit[:, layer].double().mean(0) + neg_fit[:, layer].double().mean(0)) @ u)
        p_fit, n_fit = pos_fit[:, layer].double() @ u, neg_fit[:, layer].double() @ u
        p_test, n_test = pos_test[:, layer].double() @ u, neg_test[:, layer].double() @ u
        correct = int((p_test > mid).sum()) + int((n_test <= mid).sum())
        correct_fit = int((p_fit > mid).sum()) + int((n_fit <= mid).sum())
        # secondary figure: the point equally many (fit) standard deviations from both class means
        s_pos = float(p_fit.std()) if p_fit.numel() > 1 else 0.0
        s_neg = float(n_fit.std()) if n_fit.numel() > 1 else 0.0
        m_pos, m_neg = float(p_fit.mean()), float(n_fit.mean())
        z_thr = (m_neg * s_pos + m_pos * s_neg) / (s_pos + s_neg) if s_pos + s_neg > 0 else mid
        correct_z = int((p_test > z_thr).sum()) + int((n_test <= z_thr).sum())
        scores = torch.cat([p_test, n_test]).numpy()
        labels = [1] * p_test.numel() + [0] * n_test.numel()
        out.append({
            "accuracy": correct / (p_test.numel() + n_test.numel()),
            "auroc": float(roc_auc_score(labels, scores)),
            "fit_accuracy": correct_fit / (p_fit.numel() + n_fit.numel()),
            "threshold": mid,
            "accuracy_spread_weighted": correct_z / (p_test.numel() + n_test.numel()),
            "threshold_spread_weighted": z_thr,
            "heldout_mean_projection_pos": float(p_test.mean()),
            "heldout_mean_projection_neg": float(n_test.mean()),
        })
    return out


@dataclass
class DirectionFit:
    """Directions [n_layers, d] from the fit half, separation per layer on the held-out half, R per layer."""

    directions: torch.Tensor
    separation: list[dict[str, float]]
    mean_residual_norm: torch.Tensor
    n_per_class: dict[str, int]


def fit_directions(pos: torch.Tensor, neg: torch.Tensor, pos_fit: Sequence[int], pos_test: Sequence[int],
                   neg_fit: Sequence[int], neg_test: Sequence[int], norms: torch.Tensor | None = None,
                   *, minimum: int = MIN_PER_CLASS, hint: str = "") -> DirectionFit:
    """Diff-in-means on the fit rows, separation on the held-out rows. R is the mean over the rows of `norms`
    ([rows, n_layers]: the per-example mean token norms of every example of both classes); without it, the
    mean pooled-vector norm over all rows of `pos` and `neg`."""
    pos, neg = _as3(pos, "positive-class activations"), _as3(neg, "negative-class activations")
    sizes = {"positive/fit": len(pos_fit), "positive/held-out": len(pos_test),
             "negative/fit": len(neg_fit), "negative/held-out": len(neg_test)}
    check_class_sizes(sizes, minimum, hint)
    pf, pt = pos[list(pos_fit)], pos[list(pos_test)]
    nf, nt = neg[list(neg_fit)], neg[list(neg_test)]
    if norms is None:
        norms = torch.cat([pos, neg]).double().norm(dim=-1)
    R = norms.double().mean(0).float()
    return DirectionFit(directions=diff_in_means(pf, nf), separation=separation(pf, nf, pt, nt),
                        mean_residual_norm=R, n_per_class=sizes)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Cosine of two vectors (None when either is zero)."""
    a, b = a.double(), b.double()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else None
