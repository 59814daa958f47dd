"""Closed-form ridge regression in torch (float64), with an intercept, an alpha path from one
eigendecomposition, and alpha chosen on held-out groups (prompts).

Model: Y ~ X W + b, minimising ||Y - X W - b||^2 + alpha ||W||_F^2 (the intercept is not penalised), which is
what scikit-learn's `Ridge(alpha, fit_intercept=True)` solves. With Xc, Yc centred on the training means,
the normal equations are (Xc^T Xc + alpha I) W = Xc^T Yc and b = mean(Y) - mean(X) W.

Everything works on the d_in x d_in / d_in x d_out moments (Xc^T Xc, Xc^T Yc), never on a factorisation
of the tall X:

- `fit_ridge`: one Cholesky solve of (Xc^T Xc + alpha I) W = Xc^T Yc.
- `fit_ridge_cv`: one eigendecomposition Xc^T Xc = V diag(lam) V^T of the training split gives every
  alpha's W(alpha) = V diag(1 / (lam + alpha)) V^T Xc^T Yc (equal to the thin-SVD formula
  V diag(S / (S^2 + alpha)) U^T Yc, since lam = S^2 and V^T Xc^T Yc = S U^T Yc). The validation residual
  of each alpha comes from a few shared products (see `_sweep_scores`), and the refit on all rows merges the
  training and validation moments (parallel-axis theorem) and does one more Cholesky solve.

Forming Xc^T Xc squares the condition number of Xc; the alpha grid's smallest default (1e-4 of the mean
eigenvalue) keeps (Xc^T Xc + alpha I) well conditioned. alpha = 0 (or below rounding of the largest
eigenvalue) gives the minimum-norm least-squares solution: eigen-directions below that cutoff are dropped.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

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


class _Moments:
    """Row count, means and centred cross-products of a set of paired rows: Xc^T Xc and Xc^T Yc."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        self.n = X.shape[0]
        self.x_mean = X.mean(0)
        self.y_mean = Y.mean(0)
        Xc = X - self.x_mean
        self.xx = Xc.T @ Xc
        self.xy = Xc.T @ Y  # = Xc^T Yc: Y needs no centring since Xc^T 1 = 0


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread, then restore the previous count.

    For `eigh`: LAPACK's tridiagonal reduction is memory-bound BLAS2 work with one parallel region (and
    barrier) per column, so extra threads gain little, and on shared cores (another job running) every
    barrier waits for a descheduled thread: a 1536 x 1536 eigh measured 17-29 s on 2 busy cores with 2
    threads and 1.1-1.4 s with 1 (torch 2.13 + MKL)."""
    prev = torch.get_num_threads()
    if prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _eigh(xx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with _one_thread():
        return torch.linalg.eigh(xx)


def _cutoff(lam_max: float, d: int) -> float:
    """Eigenvalues (plus alpha) at or below this are rounding noise of Xc^T Xc (numpy pinv's rule)."""
    return d * torch.finfo(torch.float64).eps * max(lam_max, 0.0)


def _filter(lam: torch.Tensor, alpha: float) -> torch.Tensor:
    """1 / (lam + alpha) per eigen-direction, 0 where lam + alpha is at or below rounding (alpha ~ 0 with a
    rank-deficient X: the minimum-norm solution)."""
    s = lam.clamp_min(0.0) + alpha
    keep = s > _cutoff(float(lam.max()), lam.shape[0])
    return torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))


def _solve(xx: torch.Tensor, xy: torch.Tensor, alpha: float) -> torch.Tensor:
    """W solving (xx + alpha I) W = xy: a Cholesky solve, or (alpha ~ 0 and xx singular) the minimum-norm
    solution from an eigendecomposition."""
    d = xx.shape[0]
    if alpha > _cutoff(float(xx.diagonal().sum()), d):  # the trace bounds the largest eigenvalue
        A = xx.clone()
        A.diagonal().add_(alpha)
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            return torch.cholesky_solve(xy, L)
    lam, V = _eigh(xx)
    return V @ (_filter(lam, alpha).unsqueeze(1) * (V.T @ xy))


def _map(W: torch.Tensor, x_mean: torch.Tensor, y_mean: torch.Tensor, alpha: float) -> RidgeMap:
    return RidgeMap(W=W, bias=y_mean - x_mean @ W, alpha=float(alpha), x_mean=x_mean, y_mean=y_mean)


def fit_ridge(X: torch.Tensor, Y: torch.Tensor, alpha: float) -> RidgeMap:
    """Ridge with intercept at one alpha (equal to sklearn's Ridge(alpha, fit_intercept=True))."""
    if not (math.isfinite(alpha) and alpha >= 0):
        raise EmsteerError(f"alpha must be finite and >= 0, got {alpha}")
    X, Y = _check_pair(X, Y)
    m = _Moments(X, Y)
    return _map(_solve(m.xx, m.xy, alpha), m.x_mean, m.y_mean, alpha)


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


def _sweep_scores(tr: _Moments, Dv: torch.Tensor, Rv: torch.Tensor, Yv: torch.Tensor, lam: torch.Tensor,
                  V: torch.Tensor, grid: list[float]) -> dict[float, float]:
    """Validation R^2 (`r2_score`) of every alpha's training fit, without forming any prediction.

    With A = Dv V (validation rows centred on the training mean, in the eigenbasis), B = V^T Xc^T Y (the
    training cross-product in the eigenbasis), Rv = Yv - training mean(Y) and F = diag(1 / (lam + alpha)),
    the residual is Rv - A F B, so

        ss_res(alpha) = ||Rv||^2 - 2 sum_k F_k c_k + F^T (G o H) F,
        c_k = (A^T Rv)_k . B_k,   G = A^T A,   H = B B^T,

    where c, G, H are computed once for the whole sweep (o: elementwise product)."""
    B = V.T @ tr.xy  # [k, d_out]
    A = Dv @ V  # [n_val, k]
    c = ((A.T @ Rv) * B).sum(1)
    GH = (A.T @ A) * (B @ B.T)
    rr = float((Rv * Rv).sum())
    ss_tot = float(((Yv - Yv.mean(0)) ** 2).sum())
    scores: dict[float, float] = {}
    for a in grid:
        f = _filter(lam, a)
        if ss_tot == 0.0:  # constant validation targets: r2_score's exact rule needs the predictions
            scores[a] = r2_score(Yv, (A * f) @ B + tr.y_mean)
            continue
        ss_res = max(rr - 2.0 * float(f @ c) + float(f @ GH @ f), 0.0)
        scores[a] = 1.0 - ss_res / ss_tot
    return scores


def fit_ridge_cv(
    X: torch.Tensor,
    Y: torch.Tensor,
    groups: Sequence[int] | torch.Tensor,
    alphas: Sequence[float] | None = None,
    *,
    val_fraction: float = 0.25,
    seed: int = 0,
) -> RidgeMap:
    """Choose alpha by R^2 on a validation split grouped by `groups` (one eigendecomposition of the training
    split's Xc^T Xc for the whole sweep), then refit on all rows with the chosen alpha (the training and
    validation moments merged, one Cholesky solve). `alphas=None` uses DEFAULT_RELATIVE_ALPHAS times the mean
    eigenvalue of the training Xc^T Xc. The returned map's `alpha_scores` holds each alpha's validation R^2."""
    X, Y = _check_pair(X, Y)
    g = torch.as_tensor(groups)
    if g.shape[0] != X.shape[0]:
        raise EmsteerError(f"groups has {g.shape[0]} entries for {X.shape[0]} rows")
    train, val = group_split(g, val_fraction, seed)
    tr = _Moments(X[train], Y[train])
    mean_eig = float(tr.xx.diagonal().sum()) / X.shape[1]
    grid = [float(a) for a in alphas] if alphas is not None else [r * mean_eig for r in DEFAULT_RELATIVE_ALPHAS]
    if not grid or not all(math.isfinite(a) and a >= 0 for a in grid):
        raise EmsteerError(f"alphas must be a non-empty list of finite values >= 0, got {list(grid)}")
    lam, V = _eigh(tr.xx)
    Yv = Y[val]
    Dv = X[val] - tr.x_mean  # validation rows about the training means
    Rv = Yv - tr.y_mean
    scores = _sweep_scores(tr, Dv, Rv, Yv, lam, V, grid)
    best = max(grid, key=lambda a: (scores[a], a))  # ties: the stronger regulariser
    # refit on all rows: moments about the training means, then shifted to the overall means
    n = X.shape[0]
    x_mean, y_mean = X.mean(0), Y.mean(0)
    dx, dy = x_mean - tr.x_mean, y_mean - tr.y_mean
    xx = tr.xx + Dv.T @ Dv - n * torch.outer(dx, dx)
    xy = tr.xy + Dv.T @ Rv - n * torch.outer(dx, dy)
    final = _map(_solve(xx, xy, best), x_mean, y_mean, best)
    final.alpha_scores = scores
    return final
