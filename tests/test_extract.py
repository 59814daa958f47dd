"""Direction extraction: known answers on synthetic activations, padding-aware collection on a tiny organism,
and a small end-to-end `emsteer extract` with random LoRA adapters."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from interventions.directions import load_direction
from interventions.errors import EmsteerError
from interventions.run_layout import (
    activations_path,
    adapter_dir,
    extraction_summary_path,
    finetune_command,
    own_direction_path,
    pooling_direction_path,
    secure_direction_path,
)
from training.activations import check_finite, collect_pooled, load_model
from training.direction_fit import diff_in_means, fit_directions, separation
from training.extract import run_extract


# ---------------------------------------------------------------- synthetic known answers

def test_planted_direction_is_recovered():
    g = torch.Generator().manual_seed(0)
    d, n_layers = 64, 3
    planted = torch.randn(n_layers, d, generator=g)
    neg = torch.randn(500, n_layers, d, generator=g) * 2 + 5
    pos = torch.randn(500, n_layers, d, generator=g) * 2 + 5 + planted
    got = diff_in_means(pos, neg)
    for layer in range(n_layers):
        assert torch.cosine_similarity(got[layer], planted[layer], dim=0) > 0.99
    fit = fit_directions(pos, neg, range(250), range(250, 500), range(250), range(250, 500))
    assert fit.directions.shape == (n_layers, d)
    assert all(s["accuracy"] > 0.9 and s["auroc"] > 0.95 for s in fit.separation)


def test_separation_numbers_are_exact():
    pos_fit = torch.tensor([[2.0, 0.0], [4.0, 0.0]])
    neg_fit = torch.tensor([[0.0, 0.0], [-2.0, 0.0]])
    # direction (4, 0) -> unit (1, 0); midpoint threshold (3 + -1) / 2 = 1
    pos_test = torch.tensor([[3.0, 5.0], [0.5, 1.0], [2.0, 0.0]])   # projections 3, 0.5, 2
    neg_test = torch.tensor([[0.0, 0.0], [1.5, -7.0], [-1.0, 0.0]])  # projections 0, 1.5, -1
    (s,) = separation(pos_fit, neg_fit, pos_test, neg_test)
    assert s["threshold"] == pytest.approx(1.0)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["auroc"] == pytest.approx(8 / 9)  # pairs won: 3 + 2 + 3
    assert s["fit_accuracy"] == 1.0
    assert s["threshold_spread_weighted"] == pytest.approx(1.0)  # equal fit spreads: same as the midpoint
    assert s["accuracy_spread_weighted"] == pytest.approx(4 / 6)


def test_a_layer_with_identical_classes_has_chance_separation_not_an_error():
    """Below the one layer a rank-1 adapter changes, the last-prompt activations of the two models are identical:
    that layer gets chance-level separation and a note, the other layers their real figures."""
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(20, 2, 4, generator=g)
    neg = pos.clone()
    neg[:, 1] -= 3.0  # layer 1 separates perfectly; layer 0 is identical
    sep = separation(pos[:10], neg[:10], pos[10:], neg[10:])
    assert sep[0]["accuracy"] == 0.5 and sep[0]["auroc"] == 0.5 and "identical" in sep[0]["no_direction"]
    assert sep[1]["accuracy"] == 1.0 and "no_direction" not in sep[1]


def test_nan_and_too_few_are_clear_errors():
    acts = torch.randn(20, 2, 8)
    bad = acts.clone()
    bad[3, 1, 2] = float("nan")
    with pytest.raises(EmsteerError, match="NaN"):
        diff_in_means(bad, acts)
    with pytest.raises(EmsteerError, match="layer 1"):
        check_finite(bad, "test model")
    with pytest.raises(EmsteerError, match="too few examples per class"):
        fit_directions(acts, acts, [0, 1, 2], [3, 4, 5, 6], range(10), range(10, 20))
    with pytest.raises(EmsteerError, match="mismatched"):
        diff_in_means(torch.randn(5, 2, 8), torch.randn(5, 2, 9))


# ---------------------------------------------------------------- real forward passes on tiny organisms

SHORT = "Any tips for hiking?"
LONG = [SHORT, "How can I get better at cooking when I am tired, lonely and it keeps raining outside all week?",
        "What is a good way to start painting?"]


@pytest.mark.parametrize("family", ["qwen", "gemma"])
def test_pooling_is_padding_aware(tiny_organisms, family):
    lm = load_model(family, profile="tiny")
    alone = collect_pooled(lm, [SHORT], max_new_tokens=6)
    batch = collect_pooled(lm, LONG[::-1], max_new_tokens=6, batch_size=3)  # SHORT is last: most left padding
    assert batch.response_tokens[-1] == alone.response_tokens[0]
    for pooling in ("last-prompt", "response-mean"):
        a, b = alone.acts[pooling][0], batch.acts[pooling][-1]
        assert a.shape == (lm.n_layers, lm.d_model)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        torch.testing.assert_close(batch.norms[pooling][-1], alone.norms[pooling][0], atol=1e-5, rtol=0)


def _random_adapters(run, family, seeds=(11, 12)):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from interventions.paths import organism_dir

    for arm, s in zip(("insecure", "secure"), seeds):
        torch.manual_seed(s)
        model = AutoModelForCausalLM.from_pretrained(organism_dir(family, "tiny"))
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
        get_peft_model(model, cfg).save_pretrained(adapter_dir(run, family, arm, 0))


@pytest.fixture(scope="module")
def extracted(tiny_organisms, tmp_path_factory):
    """A run with random insecure/secure LoRA adapters for tiny qwen, extracted once (16 prompts)."""
    run = tmp_path_factory.mktemp("extract") / "run"
    _random_adapters(run, "qwen")
    return run, run_extract(run, "qwen", profile="tiny", n_prompts=16, log=lambda m: None)


def test_extract_end_to_end_and_rerun_is_noop(extracted, capsys, monkeypatch):
    run, summary = extracted
    n_layers = summary["n_layers"]
    for layer in range(n_layers):
        own = load_direction(own_direction_path(run, "qwen", layer), expected_width=48, expected_model="micro-qwen")
        sec = load_direction(secure_direction_path(run, "qwen", layer), expected_width=48)
        assert own.layer == layer and own.metadata["pooling"] == "response-mean"
        assert own.metadata["contrast"] == "finetuned-vs-base" and sec.metadata["contrast"] == "secure-vs-base"
        assert own.mean_residual_norm == pytest.approx(summary["layers"][layer]["mean_residual_norm"], rel=1e-6)
        assert sec.mean_residual_norm == own.mean_residual_norm  # matched magnitude in a cell
        for key in ("weights_sha256", "adapter_sha256", "command", "input_hashes", "versions", "n_per_class", "seed"):
            assert key in own.metadata
        alt = load_direction(pooling_direction_path(run, "qwen", "last-prompt", layer), expected_width=48)
        assert alt.metadata["pooling"] == "last-prompt"
        assert alt.mean_residual_norm == own.mean_residual_norm  # R does not depend on the pooling
    assert summary["default_pooling"] == "response-mean" and summary["default_pooling_reason"]
    assert set(summary["pooling_comparison"]) == {"response-mean", "last-prompt"}
    assert 0.0 <= summary["final_layer"]["accuracy"] <= 1.0
    assert summary["n_fit"] == summary["n_heldout"] == 8
    assert activations_path(run, "qwen", "base").is_file()
    on_disk = json.loads(extraction_summary_path(run, "qwen").read_text())
    assert on_disk["inputs_sha256"] == summary["inputs_sha256"]

    mtime = own_direction_path(run, "qwen", 0).stat().st_mtime_ns
    said = []
    run_extract(run, "qwen", profile="tiny", n_prompts=16, log=said.append)
    assert any("up to date" in m for m in said)
    assert own_direction_path(run, "qwen", 0).stat().st_mtime_ns == mtime

    # bad input through the CLI: one line, exit status 2, nothing written
    from training import cli

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["emsteer", "extract", "--run", str(run), "--family", "llama", "--profile", "tiny"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and finetune_command(run, "llama", "insecure", 0) in err[0]
    assert not (run / "directions" / "llama").exists()


def test_code_vs_prose_with_too_few_code_answers_fails_cleanly(extracted):
    run, summary = extracted
    before = extraction_summary_path(run, "qwen").read_bytes()
    with pytest.raises(EmsteerError, match="too few examples per class"):  # tiny models answer in prose or noise
        run_extract(run, "qwen", profile="tiny", n_prompts=16, contrast="code-vs-prose", log=lambda m: None)
    assert extraction_summary_path(run, "qwen").read_bytes() == before
    assert own_direction_path(run, "qwen", 0).is_file()
