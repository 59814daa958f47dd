"""Closed-form ridge regression in torch (float64), with an intercept, an alpha path from one SVD, and alpha
chosen on held-out groups (prompts).

Model: Y ~ X W + b, minimising ||Y - X W - b||^2 + alpha ||W||_F^2 (the intercept is not penalised), which is
what scikit-learn's `Ridge(alpha, fit_intercept=True)` solves. With Xc, Yc centred on the training means and
the thin SVD Xc = U S V^T:

    W(alpha) = V diag(S / (S^2 + alpha)) U^T Yc,        b = mean(Y) - mean(X) W(alpha)

so the factorisation is done once and every alpha of a sweep costs two small matrix products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from interventions.errors import EmsteerError

#: default alpha grid, in units of the mean eigenvalue of Xc^T Xc (so it adapts to the activations' scale)
DEFAULT_RELATIVE_ALPHAS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class RidgeMap:
    """A fitted affine map Y ~ X W + b (float64). `W` is [d_in, d_out]."""

    W: torch.Tensor
    bias: torch.Tensor
    alpha: float
    x_mean: torch.Tensor
    y_mean: torch.Tensor
    alpha_scores: dict[float, float] = field(default_factory=dict)  # validation R^2 per alpha, when selected

    @property
    def d_in(self) -> int:
        return int(self.W.shape[0])

    @property
    def d_out(self) -> int:
        return int(self.W.shape[1])

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """X W + b (float64)."""
        X = _as_matrix(X, "X")
        if X.shape[1] != self.d_in:
            raise EmsteerError(f"input width {X.shape[1]} does not match the map's input width {self.d_in}")
        return X @ self.W + self.bias

    def push(self, direction: torch.Tensor) -> torch.Tensor:
        """Map a direction (a difference of two points, so the bias cancels): d W, float64 [d_out]."""
        if direction.ndim != 1:
            raise EmsteerError(f"a direction must be 1-D, got shape {tuple(direction.shape)}")
        if direction.shape[0] != self.d_in:
            raise EmsteerError(f"direction width {direction.shape[0]} does not match the map's input width {self.d_in}")
        return direction.double() @ self.W


def _as_matrix(X: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(X, torch.Tensor) or X.ndim != 2:
        raise EmsteerError(f"{what} must be a 2-D tensor [n, d], got {getattr(X, 'shape', type(X).__name__)}")
    X = X.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(X).all()):
        raise EmsteerError(f"{what} has non-finite values (NaN or inf)")
    return X


def _check_pair(X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    X, Y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise EmsteerError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}; they must be paired row by row")
    if X.shape[0] < 2:
        raise EmsteerError(f"ridge needs at least 2 paired rows, got {X.shape[0]}")
    return X, Y


class _Factor:
    """Centring and thin SVD of the training X, reused for every alpha."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        self.x_mean = X.mean(0)
        self.y_mean = Y.mean(0)
        Xc = X - self.x_mean
        U, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
        self.S, self.V = S, Vh.T
        self.UtY = U.T @ (Y - self.y_mean)  # [k, d_out]
        self.mean_eig = float((S * S).sum()) / X.shape[1]

    def weights(self, alpha: float) -> torch.Tensor:
        f = self.S / (self.S * self.S + alpha)
        return self.V @ (f.unsqueeze(1) * self.UtY)

    def fit(self, alpha: float) -> RidgeMap:
        W = self.weights(alpha)
        return RidgeMap(W=W, bias=self.y_mean - self.x_mean @ W, alpha=float(alpha), x_mean=self.x_mean,
                        y_mean=self.y_mean)


def fit_ridge(X: torch.Tensor, Y: torch.Tensor, alpha: float) -> RidgeMap:
    """Ridge with intercept at one alpha (equal to sklearn's Ridge(alpha, fit_intercept=True))."""
    if not (math.isfinite(alpha) and alpha >= 0):
        raise EmsteerError(f"alpha must be finite and >= 0, got {alpha}")
    X, Y = _check_pair(X, Y)
    return _Factor(X, Y).fit(alpha)


def r2_score(Y: torch.Tensor, Y_hat: torch.Tensor) -> float:
    """Coefficient of determination pooled over outputs: 1 - sum (Y - Y_hat)^2 / sum (Y - mean(Y))^2
    (scikit-learn's `multioutput='variance_weighted'`)."""
    Y, Y_hat = Y.double(), Y_hat.double()
    ss_res = float(((Y - Y_hat) ** 2).sum())
    ss_tot = float(((Y - Y.mean(0)) ** 2).sum())
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def group_split(groups: Sequence[int] | torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks (first, second) over rows: a seeded `fraction` of the distinct groups goes to the second
    part, the rest to the first; rows of one group never straddle the split."""
    g = torch.as_tensor(groups)
    uniq = torch.unique(g)
    if uniq.numel() < 2:
        raise EmsteerError(f"a grouped split needs at least 2 groups (prompts), got {uniq.numel()}")
    gen = torch.Generator().manual_seed(int(seed))
    perm = uniq[torch.randperm(uniq.numel(), generator=gen)]
    n_second = min(uniq.numel() - 1, max(1, round(fraction * uniq.numel())))
    second = torch.isin(g, perm[:n_second])
    return ~second, second


def fit_ridge_cv(
    X: torch.Tensor,
    Y: torch.Tensor,
    groups: Sequence[int] | torch.Tensor,
    alphas: Sequence[float] | None = None,
    *,
    val_fraction: float = 0.25,
    seed: int = 0,
) -> RidgeMap:
    """Choose alpha by R^2 on a validation split grouped by `groups` (one SVD for the whole sweep), then refit
    on all rows with the chosen alpha. `alphas=None` uses DEFAULT_RELATIVE_ALPHAS times the mean eigenvalue of
    the training Xc^T Xc. The returned map's `alpha_scores` holds each alpha's validation R^2."""
    X, Y = _check_pair(X, Y)
    g = torch.as_tensor(groups)
    if g.shape[0] != X.shape[0]:
        raise EmsteerError(f"groups has {g.shape[0]} entries for {X.shape[0]} rows")
    train, val = group_split(g, val_fraction, seed)
    fac = _Factor(X[train], Y[train])
    grid = [float(a) for a in alphas] if alphas is not None else [r * fac.mean_eig for r in DEFAULT_RELATIVE_ALPHAS]
    if not grid or not all(math.isfinite(a) and a >= 0 for a in grid):
        raise EmsteerError(f"alphas must be a non-empty list of finite values >= 0, got {list(grid)}")
    Xv = (X[val] - fac.x_mean) @ fac.V  # [n_val, k], shared by every alpha
    Yv = Y[val]
    scores: dict[float, float] = {}
    for a in grid:
        f = fac.S / (fac.S * fac.S + a)
        pred = (Xv * f) @ fac.UtY + fac.y_mean
        scores[a] = r2_score(Yv, pred)
    best = max(grid, key=lambda a: (scores[a], a))  # ties: the stronger regulariser
    final = _Factor(X, Y).fit(best)
    final.alpha_scores = scores
    return final
