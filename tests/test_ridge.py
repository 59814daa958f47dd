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
