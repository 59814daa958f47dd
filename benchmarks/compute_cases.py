"""Non-generation benchmarks: activation collection vs a bare forward, and the ridge fit vs scikit-learn.

`extract_vs_forward`: `training.activations.pool_last_k` (what `collect_pooled` runs for every pooling: hooks
on every decoder layer, pooled and normed in one op per layer) over the chat-templated held-out prompts /
the same text-decoder forwards (`training.activations._decoder_forward`, same left-padded batches, same
position ids, no hooks). Tokenisation is done once, outside the timed span, for both.

`ridge_vs_sklearn`: `training.ridge.fit_ridge_cv` (alpha chosen by R^2 on a grouped validation split from one
SVD, then a refit on all rows) / scikit-learn `RidgeCV` (efficient leave-one-out over the same six alphas),
float64, on synthetic activations of real Qwen->Gemma widths. The two pick alpha by different criteria; the
coefficient check compares the two final maps when they chose the same alpha, else the project's
`fit_ridge` at scikit-learn's alpha with RidgeCV's coefficients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from benchmarks.generation_cases import heldout_prompts
from benchmarks.timing import Result, ratio_result, time_pairs
from interventions.errors import EmsteerError
from training.ridge import DEFAULT_RELATIVE_ALPHAS, fit_ridge, fit_ridge_cv


def extract_vs_forward(pairs: int, *, n_prompts: int = 160, batch_size: int = 16, family: str = "qwen") -> Result:
    """Activation collection at every layer / a bare batched forward over the same batches."""
    from training.activations import _decoder_forward, _left_pad, load_model, pool_last_k, prompt_ids

    lm = load_model(family)
    prompts = [r["prompt"] for r in heldout_prompts()]
    prompts = (prompts * (n_prompts // len(prompts) + 1))[:n_prompts]
    ids = prompt_ids(lm.tokenizer, prompts)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    k = [1] * len(ids)

    def collect() -> tuple[torch.Tensor, torch.Tensor]:
        return pool_last_k(lm.model, ids, k, pad, batch_size=batch_size)

    @torch.inference_mode()
    def bare() -> int:
        for start in range(0, len(ids), batch_size):
            chunk_ids, mask = _left_pad(ids[start:start + batch_size], pad)
            _decoder_forward(lm.model, chunk_ids, mask)
        return len(ids)

    def check(side: str, out: Any) -> None:
        if side == "a" and tuple(out[0].shape) != (len(ids), lm.n_layers, lm.d_model):
            raise EmsteerError(f"collection returned shape {tuple(out[0].shape)}")

    times = time_pairs(collect, bare, pairs, check=check)
    tokens = sum(len(s) for s in ids)
    detail = {"model": f"micro-{family} (default profile, fp32)", "prompts": len(ids), "batch_size": batch_size,
              "tokens": tokens, "layers_captured": lm.n_layers, "pooling": "last-prompt (pool_last_k, k=1)"}
    return ratio_result("extract_vs_forward", "pool_last_k, all layers / bare decoder forward", 1.10, times,
                        detail=detail)


def ridge_data(n: int, d_in: int, d_out: int, rows_per_group: int = 20, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic paired activations: X with a decaying spectrum (like a residual stream), Y = X W + noise.
    float64; `groups` mark rows of one prompt (rows_per_group consecutive rows)."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.sqrt(1.0 + np.arange(d_in))
    X = rng.standard_normal((n, d_in)) * scales + rng.standard_normal(d_in)
    W = rng.standard_normal((d_in, d_out)) / np.sqrt(d_in)
    Y = X @ W + 0.5 * rng.standard_normal((n, d_out)) + rng.standard_normal(d_out)
    groups = np.arange(n) // rows_per_group
    return X, Y, groups


def ridge_vs_sklearn(pairs: int, *, n: int = 5000, d_in: int = 1536, d_out: int = 2304) -> Result:
    """The project's ridge with a 6-value alpha sweep / scikit-learn RidgeCV on the same data and alphas."""
    from sklearn.linear_model import RidgeCV

    X, Y, groups = ridge_data(n, d_in, d_out)
    Xt, Yt, gt = torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(groups)
    Xc = X - X.mean(0)
    mean_eig = float((Xc * Xc).sum()) / d_in  # the scale DEFAULT_RELATIVE_ALPHAS is relative to
    alphas = [r * mean_eig for r in DEFAULT_RELATIVE_ALPHAS]
    del Xc

    def ours() -> Any:
        return fit_ridge_cv(Xt, Yt, gt, alphas)

    def sklearn() -> Any:
        return RidgeCV(alphas=alphas, fit_intercept=True).fit(X, Y)

    # warm-up on a small problem of the same shape class (a full-size call costs tens of seconds per side)
    Xw, Yw, gw = ridge_data(400, 96, 144, seed=1)
    fit_ridge_cv(torch.from_numpy(Xw), torch.from_numpy(Yw), torch.from_numpy(gw), alphas)
    RidgeCV(alphas=alphas, fit_intercept=True).fit(Xw, Yw)
    last: dict[str, Any] = {}
    times = time_pairs(ours, sklearn, pairs, warmup=False, check=lambda side, out: last.__setitem__(side, out))
    mine, sk = last["a"], last["b"]
    same_alpha = bool(np.isclose(mine.alpha, sk.alpha_, rtol=1e-12))
    ref = mine if same_alpha else fit_ridge(Xt, Yt, float(sk.alpha_))
    W = ref.W.numpy()
    coef_diff = float(np.abs(W - sk.coef_.T).max())
    bias_diff = float(np.abs(ref.bias.numpy() - sk.intercept_).max())
    scale = float(np.abs(sk.coef_).max())
    ok = coef_diff <= 1e-3 and bias_diff <= 1e-3
    detail: dict[str, Any] = {
        "shape": f"{n} x {d_in} -> {d_out}", "dtype": "float64", "alphas": alphas,
        "alpha_ours": mine.alpha, "alpha_sklearn": float(sk.alpha_), "same_alpha_chosen": same_alpha,
        "compared": "final maps" if same_alpha else "fit_ridge at sklearn's alpha vs RidgeCV",
        "max_abs_coef_diff": coef_diff, "max_abs_intercept_diff": bias_diff, "max_abs_coef": scale,
        "coefficients_equal_1e-3": ok,
        "warmup": "one small (400 x 96 -> 144) fit of each side",
        "selection": "ours: R^2 on a 25% grouped validation split, refit on all rows; sklearn: efficient LOO (GCV)",
    }
    result = ratio_result("ridge_vs_sklearn", "fit_ridge_cv, 6 alphas / sklearn RidgeCV", 0.35, times, detail=detail)
    if not ok:
        result.status = f"{result.status}; coefficients differ by {coef_diff:.2e} (> 1e-3)"
    return result
