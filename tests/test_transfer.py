"""Cross-family transfer: the map maths on synthetic pairs, and a small end-to-end run between two tiny
organisms of different widths and tokenizers (own directions are synthetic files)."""

from __future__ import annotations

import json

import pytest
import torch

from interventions.directions import Direction, load_direction, save_direction
from interventions.errors import EmsteerError
from interventions.model_ref import organism_ref
from interventions.registry import VariantContext, resolve_variant
from interventions.run_layout import (
    own_direction_path,
    transfer_dir,
    transfer_map_path,
    transfer_summary_path,
    transferred_direction_path,
    transferred_random_path,
)
from training.artifacts import load_tensors
from training.transfer import fit_map, run_transfer, transfer_vector


def test_fit_map_recovers_a_planted_map_and_pushes_directions():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 10, generator=g, dtype=torch.float64)
    W = torch.randn(10, 6, generator=g, dtype=torch.float64)
    Y = X @ W + 3.0
    groups = torch.arange(400) // 8
    fit = fit_map(X, Y, groups, set(range(25)))
    assert fit.r2_heldout > 0.99 and fit.n_fit == 200 and fit.n_heldout == 200
    d = torch.randn(10, generator=g, dtype=torch.float64)
    assert torch.allclose(transfer_vector(fit.map, d), d @ W, atol=1e-3)  # the bias cancels
    with pytest.raises(EmsteerError, match="width"):
        transfer_vector(fit.map, torch.randn(7))


def _own(run, family, layer, width, *, R=5.0, seed=0, sha=None, model_id=None):
    base = organism_ref(family, "tiny")
    mid, wsha = base.model_id, base.weights_sha256
    g = torch.Generator().manual_seed(seed)
    meta = {"model_id": model_id or mid, "weights_sha256": sha or wsha, "layer": layer, "mean_residual_norm": R,
            "pooling": "response-mean", "contrast": "finetuned-vs-base"}
    save_direction(own_direction_path(run, family, layer), Direction(torch.randn(width, generator=g), meta))


def test_transfer_end_to_end(tiny_organisms, tmp_path):
    run = tmp_path / "run"
    _own(run, "qwen", 1, 48, seed=1)
    _own(run, "llama", 1, 40, R=3.25, seed=2)
    s = run_transfer(run, "qwen", "llama", profile="tiny", n_texts=12, k_random=3, log=lambda m: None)
    assert json.loads(transfer_summary_path(run, "qwen", "llama").read_text()) == s
    assert s["d_src"] == 48 and s["d_tgt"] == 40 and s["models"] == "base" and s["pairing"] == "aligned-tokens"
    assert s["n_pairs_fit"] > 12 and -1.0 <= s["r2_heldout"] <= 1.0
    assert set(s["pairing_comparison"]) == {"aligned-tokens", "last-token"}
    assert s["pairing_comparison"]["last-token"]["n_pairs_fit"] == 6
    assert -1.0 <= s["map_check"]["cosine"] <= 1.0

    own_b = load_direction(own_direction_path(run, "llama", 1))
    t = load_direction(transferred_direction_path(run, "qwen", "llama"), expected_width=40, expected_model="micro-llama")
    assert t.norm == pytest.approx(own_b.norm, rel=1e-5) and t.mean_residual_norm == 3.25
    assert float(torch.cosine_similarity(t.vector, own_b.vector, dim=0)) == pytest.approx(s["cosine_with_own"], abs=1e-5)
    tensors, meta = load_tensors(transfer_map_path(run, "qwen", "llama"))
    assert tensors["W"].shape == (48, 40) and tensors["W"].dtype == torch.float64
    own_a = load_direction(own_direction_path(run, "qwen", 1))
    pushed = own_a.vector.double() @ tensors["W"]
    assert float(torch.cosine_similarity(pushed, t.vector.double(), dim=0)) == pytest.approx(1.0, abs=1e-6)
    assert "command" in meta and "input_hashes" in meta and "versions" in meta
    assert len(s["transferred_random"]["cosines_with_own"]) == 3
    for k in range(3):
        r = load_direction(transferred_random_path(run, "qwen", "llama", k), expected_width=40)
        assert r.norm == pytest.approx(own_b.norm, rel=1e-5)

    ctx = VariantContext(family="llama", run=run, layer=1, n_layers=2, d_model=40, seed=2, donor="qwen",
                         model_id="micro-llama")
    assert resolve_variant("transferred", ctx).width == 40
    assert resolve_variant("transferred_random", ctx).metadata["variant"] == "transferred_random"

    said = []
    mtime = transferred_direction_path(run, "qwen", "llama").stat().st_mtime_ns
    run_transfer(run, "qwen", "llama", profile="tiny", n_texts=12, k_random=3, log=said.append)
    assert any("up to date" in m for m in said)
    assert transferred_direction_path(run, "qwen", "llama").stat().st_mtime_ns == mtime


def test_bad_directions_are_refused_before_anything_is_written(tiny_organisms, tmp_path):
    run = tmp_path / "run"
    _own(run, "qwen", 1, 47)  # wrong width for qwen (48)
    _own(run, "llama", 1, 40)
    with pytest.raises(EmsteerError, match="does not match the model's hidden size 48"):
        run_transfer(run, "qwen", "llama", profile="tiny", n_texts=8, log=lambda m: None)
    _own(run, "qwen", 1, 48)
    _own(run, "llama", 1, 40, sha="0" * 64)  # made from other weights
    with pytest.raises(EmsteerError, match="other weights"):
        run_transfer(run, "qwen", "llama", profile="tiny", n_texts=8, log=lambda m: None)
    _own(run, "llama", 1, 40, model_id="micro-gemma")  # a direction of another model
    with pytest.raises(EmsteerError, match="micro-gemma"):
        run_transfer(run, "qwen", "llama", profile="tiny", n_texts=8, log=lambda m: None)
    with pytest.raises(EmsteerError, match="different families"):
        run_transfer(run, "qwen", "qwen", profile="tiny", log=lambda m: None)
    assert not transfer_dir(run, "qwen", "llama").exists()
