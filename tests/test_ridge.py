"""Known-answer tests for the closed-form ridge (training/ridge.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from interventions.errors import EmsteerError
from training.ridge import fit_ridge, fit_ridge_cv, group_split, r2_score


def planted(n=600, d_in=20, d_out=12, noise=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3.0, d_in, dtype=torch.float64)
    W = torch.randn(d_in, d_out, generator=g, dtype=torch.float64)
    b = torch.randn(d_out, generator=g, dtype=torch.float64) * 5
    Y = X @ W + b + noise * torch.randn(n, d_out, generator=g, dtype=torch.float64)
    groups = torch.arange(n) // 6  # 100 "prompts" of 6 tokens each
    return X, Y, W, b, groups


def test_planted_map_is_recovered_on_held_out_groups():
    X, Y, W, b, groups = planted()
    fit, test = group_split(groups, 0.3, seed=1)
    m = fit_ridge_cv(X[fit], Y[fit], groups[fit], seed=2)
    assert r2_score(Y[test], m.predict(X[test])) > 0.99
    assert torch.allclose(m.W, W, atol=1e-2)
    assert torch.allclose(m.bias, b, atol=1e-2)
    assert len(m.alpha_scores) == 6 and m.alpha in m.alpha_scores


@pytest.mark.parametrize("alpha", [0.0, 0.5, 3.0, 250.0])
def test_equals_sklearn_ridge_with_intercept(alpha):
    X, Y, *_ = planted(n=200, noise=0.5, seed=alpha.__hash__() % 7)
    m = fit_ridge(X, Y, alpha)
    ref = Ridge(alpha=alpha, fit_intercept=True, solver="svd").fit(X.numpy(), Y.numpy())
    np.testing.assert_allclose(m.W.numpy(), ref.coef_.T, atol=1e-4, rtol=0)
    np.testing.assert_allclose(m.bias.numpy(), ref.intercept_, atol=1e-4, rtol=0)
    np.testing.assert_allclose(m.predict(X).numpy(), ref.predict(X.numpy()), atol=1e-4, rtol=0)


def test_sweep_scores_equal_separate_fits():
    X, Y, _, _, groups = planted(n=300, noise=2.0, seed=3)
    alphas = [0.1, 10.0, 1000.0]
    m = fit_ridge_cv(X, Y, groups, alphas, val_fraction=0.25, seed=5)
    train, val = group_split(groups, 0.25, seed=5)
    for a in alphas:
        ref = fit_ridge(X[train], Y[train], a)
        assert m.alpha_scores[a] == pytest.approx(r2_score(Y[val], ref.predict(X[val])), abs=1e-10)
    assert m.alpha == max(alphas, key=lambda a: m.alpha_scores[a])


def test_group_split_never_straddles():
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 5])
    first, second = group_split(groups, 0.4, seed=0)
    assert not set(groups[first].tolist()) & set(groups[second].tolist())
    assert bool((first ^ second).all())


def test_bad_input_is_one_clear_error():
    X, Y, *_ = planted(n=50)
    with pytest.raises(EmsteerError, match="rows"):
        fit_ridge(X, Y[:-1], 1.0)
    Xn = X.clone()
    Xn[3, 2] = float("nan")
    with pytest.raises(EmsteerError, match="NaN"):
        fit_ridge(Xn, Y, 1.0)
    m = fit_ridge(X, Y, 1.0)
    with pytest.raises(EmsteerError, match="width"):
        m.push(torch.randn(X.shape[1] + 1))
    with pytest.raises(EmsteerError, match="groups"):
        group_split(torch.zeros(5), 0.5, 0)


def _svd_reference_cv(X, Y, groups, alphas, val_fraction, seed):
    """The previous implementation's formulas, kept small: thin SVD of the centred training split, W(alpha) =
    V diag(S / (S^2 + alpha)) U^T Yc, validation R^2 per alpha, refit on all rows by a second SVD."""

    def svd_fit(Xf, Yf, alpha):
        xm, ym = Xf.mean(0), Yf.mean(0)
        U, S, Vh = torch.linalg.svd(Xf - xm, full_matrices=False)
        W = Vh.T @ ((S / (S * S + alpha)).unsqueeze(1) * (U.T @ (Yf - ym)))
        return W, ym - xm @ W, float((S * S).sum()) / Xf.shape[1]

    train, val = group_split(groups, val_fraction, seed)
    mean_eig = svd_fit(X[train], Y[train], 1.0)[2]
    grid = alphas if alphas is not None else [r * mean_eig for r in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)]
    scores = []
    for a in grid:
        W, b, _ = svd_fit(X[train], Y[train], a)
        scores.append(r2_score(Y[val], X[val] @ W + b))
    best = max(range(len(grid)), key=lambda i: (scores[i], grid[i]))
    W, b, _ = svd_fit(X, Y, grid[best])
    return grid[best], scores, W, b


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("shape", [(400, 30, 50), (240, 64, 16), (90, 12, 7)])
def test_gram_path_equals_svd_formula(shape):
    n, d_in, d_out = shape
    g = torch.Generator().manual_seed(n + d_in)
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64) * torch.logspace(0, -1.5, d_in, dtype=torch.float64)
    X = X + 3.0 * torch.randn(d_in, generator=g, dtype=torch.float64)  # a large common offset, as activations have
    Y = X @ torch.randn(d_in, d_out, generator=g, dtype=torch.float64) + torch.randn(n, d_out, generator=g,
                                                                                     dtype=torch.float64)
    groups = torch.arange(n) // 5
    for alphas in (None, [0.01, 0.3, 4.0, 80.0]):
        m = fit_ridge_cv(X, Y, groups, alphas, val_fraction=0.3, seed=4)
        alpha, scores, W, b = _svd_reference_cv(X, Y, groups, alphas, 0.3, 4)
        assert m.alpha == pytest.approx(alpha, rel=1e-12)
        assert list(m.alpha_scores.values()) == pytest.approx(scores, abs=1e-10)
        assert _rel(m.W, W) < 1e-8 and _rel(m.bias, b) < 1e-8
    for alpha in (0.0, 0.02, 5.0):
        m = fit_ridge(X, Y, alpha)
        _, _, W, b = _svd_reference_cv(X, Y, groups, [alpha], 0.3, 4)
        assert _rel(m.W, W) < 1e-8 and _rel(m.bias, b) < 1e-8


def test_alpha_zero_underdetermined_is_minimum_norm():
    g = torch.Generator().manual_seed(11)
    X = torch.randn(15, 40, generator=g, dtype=torch.float64)
    Y = torch.randn(15, 6, generator=g, dtype=torch.float64)
    m = fit_ridge(X, Y, 0.0)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    ref = torch.linalg.pinv(Xc) @ Yc
    assert _rel(m.W, ref) < 1e-8
    assert torch.allclose(m.predict(X), Y, atol=1e-8)  # interpolates: n - 1 < d_in


def test_thread_count_is_restored():
    before = torch.get_num_threads()
    X, Y, _, _, groups = planted(n=120)
    fit_ridge_cv(X, Y, groups)
    assert torch.get_num_threads() == before
