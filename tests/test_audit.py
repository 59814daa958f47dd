"""Auditing checkpoints by projection: known answers on synthetic projections, bad input before any weights
load, and a tiny-profile end to end (extract -> audit -> validation over held-out checkpoints)."""

from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch

from evals.monitor import auroc_with_interval, find_calibration
from interventions.directions import Direction, load_direction, save_direction
from interventions.errors import EmsteerError
from interventions.run_layout import adapter_dir, own_direction_path, pooling_direction_path, transferred_direction_path
from training.audit import run_audit
from training.audit_directions import audit_direction_path, audit_validation_path, remove_component
from training.audit_scoring import fit_calibration, project, score_audit
from training.audit_validation import validate_audit

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- known answers (pure)

def test_planted_shift_is_detected_with_high_probability():
    cal = fit_calibration(RNG.normal(0, 1, 200), RNG.normal(6, 1, 200))
    assert cal["auroc"] > 0.999 and cal["effect_size"] == pytest.approx(6, abs=0.5) and cal["coef"] > 0
    r = score_audit(RNG.normal(0, 1, 50), RNG.normal(6, 1, 50), cal, n_boot=500)
    assert r["probability"] > 0.9 and r["flagged"] and r["decision"] == "carries the finetuned shift"
    assert r["effect_size"] == pytest.approx(6, abs=1.0)
    lo, hi = r["probability_ci95"]
    assert lo <= r["probability"] <= hi and lo > 0.8
    assert r["effect_size_ci95"][0] <= r["effect_size"] <= r["effect_size_ci95"][1]
    base_like = score_audit(RNG.normal(0, 1, 50), RNG.normal(0, 1, 50), cal)
    assert base_like["probability"] < 0.1 and not base_like["flagged"] and abs(base_like["effect_size"]) < 0.6
    # AUROC over checkpoints: 3 planted-shift checkpoints above 4 base-like ones
    scores = [score_audit(RNG.normal(0, 1, 30), RNG.normal(m, 1, 30), cal, n_boot=0)["probability"]
              for m in (5, 6, 7, 0, 0, 0, 0)]
    assert auroc_with_interval(scores, [1, 1, 1, 0, 0, 0, 0], n_boot=0)["auroc"] == 1.0


def test_equal_distributions_give_one_half():
    cal = fit_calibration(RNG.normal(0, 1, 2000), RNG.normal(0, 1, 2000))
    assert abs(cal["auroc"] - 0.5) < 0.05 and abs(cal["coef"]) < 0.1
    r = score_audit(RNG.normal(0, 1, 500), RNG.normal(0, 1, 500), cal)
    assert r["probability"] == pytest.approx(0.5, abs=0.03)


def test_exact_numbers():
    # base projections 0, 1, 2 (mean 1, sd 1); audited 3, 4 -> z = 2, 3 -> effect size 2.5
    cal = {"coef": 1.0, "intercept": 0.0, "effect_size": 5.0}
    r = score_audit([0.0, 1.0, 2.0], [3.0, 4.0], cal, n_boot=0)
    assert r["effect_size"] == pytest.approx(2.5) and r["shift"] == pytest.approx(2.5)
    assert r["probability"] == pytest.approx((1 / (1 + np.exp(-2)) + 1 / (1 + np.exp(-3))) / 2)
    assert r["relative_to_calibration"] == pytest.approx(0.5) and r["probability_ci95"] is None
    acts = torch.zeros(2, 3, 4)
    acts[:, 1, 0] = torch.tensor([2.0, -1.0])
    assert project(acts, 1, torch.tensor([3.0, 0, 0, 0])).tolist() == [2.0, -1.0]
    v = remove_component(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([2.0, 0.0, 0.0]))
    assert v.tolist() == [0.0, 1.0, 0.0]


def test_bad_numbers_are_one_line_errors():
    cal = {"coef": 1.0, "intercept": 0.0}
    with pytest.raises(EmsteerError, match="at least 2 reference"):
        score_audit([1.0], [2.0], cal)
    with pytest.raises(EmsteerError, match="zero spread"):
        score_audit([1.0, 1.0], [2.0], cal)
    with pytest.raises(EmsteerError, match="threshold"):
        score_audit([0.0, 1.0], [2.0], cal, threshold=1.5)
    with pytest.raises(EmsteerError, match="NaN"):
        fit_calibration([0.0, float("nan")], [1.0, 2.0])
    with pytest.raises(EmsteerError, match="width"):
        project(torch.zeros(2, 3, 4), 0, torch.ones(5))


# ---------------------------------------------------------------- tiny end to end

def _adapters(run):
    """Random LoRA adapters for tiny qwen: insecure seed 1 is a 0.9x copy of insecure seed 0 (a planted shared
    shift), the secure seeds are independent random adapters."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from interventions.paths import organism_dir

    def make(seed):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(organism_dir("qwen", "tiny"))
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
        return get_peft_model(model, cfg)

    ins = make(11)
    ins.save_pretrained(adapter_dir(run, "qwen", "insecure", 0))
    with torch.no_grad():
        for name, p in ins.named_parameters():
            if "lora_B" in name:
                p.mul_(0.9)
    ins.save_pretrained(adapter_dir(run, "qwen", "insecure", 1))
    make(12).save_pretrained(adapter_dir(run, "qwen", "secure", 0))
    make(13).save_pretrained(adapter_dir(run, "qwen", "secure", 1))


@pytest.fixture(scope="module")
def audited_run(tiny_organisms, tmp_path_factory):
    from training.extract import run_extract

    run = tmp_path_factory.mktemp("audit") / "run"
    _adapters(run)
    summary = run_extract(run, "qwen", profile="tiny", n_prompts=16, log=lambda m: None)
    return run, summary["n_layers"] - 1


def test_extract_stores_calibrations_and_the_audit_direction(audited_run):
    run, last = audited_run
    own = own_direction_path(run, "qwen", last)
    entry = find_calibration(own)
    assert entry is not None and entry["layer"] == last and entry["audit_pooling"] == "last-prompt"
    assert {"coef", "intercept", "ref_mean", "ref_sd", "auroc", "monitor_threshold"} <= set(entry)
    assert find_calibration(pooling_direction_path(run, "qwen", "last-prompt", last)) is not None
    summary = json.loads((own.parent.parent / "summary.json").read_text())
    assert summary["audit_calibration"] == "audit_calibration.json"
    d = load_direction(audit_direction_path(run, "qwen", last), expected_width=48, expected_model="micro-qwen")
    assert d.metadata["pooling"] == "last-prompt" and d.metadata["kind"] == "audit"
    assert find_calibration(audit_direction_path(run, "qwen", last))["n_negative"] == 8


def test_audit_a_checkpoint_end_to_end(audited_run, monkeypatch, capsys):
    run, last = audited_run
    direction = audit_direction_path(run, "qwen", last)
    r = run_audit("micro-qwen", direction, adapter=adapter_dir(run, "qwen", "insecure", 1), log=lambda m: None)
    assert r["n_reference"] == 6 and r["n_audited"] == 6 and r["layer"] == last and r["pooling"] == "last-prompt"
    assert r["flagged"] and r["probability"] > 0.5 and r["effect_size"] > 2  # the planted 0.9x copy
    assert r["probability_ci95"][0] <= r["probability"] <= r["probability_ci95"][1]
    assert r["reference_note"] == "the same base with the adapter disabled"
    assert r["calibration"]["source"].startswith("stored") and r["seconds"]["forward"] > 0
    base = run_audit("micro-qwen", direction, log=lambda m: None)
    assert not base["flagged"] and base["probability"] < 0.5  # the base itself, on disjoint prompt halves

    from training import cli

    monkeypatch.setattr(sys, "argv", ["emsteer", "audit", "--model", "micro-qwen", "--direction", str(direction),
                                      "--adapter", str(adapter_dir(run, "qwen", "insecure", 1)), "--json"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["probability"] == pytest.approx(r["probability"]) and out["flagged"]


def _emsteer(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """Run `emsteer ARGV` in this process: (exit code, stdout, stderr)."""
    from training import cli

    monkeypatch.setattr(sys, "argv", ["emsteer", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main()
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


def test_adapter_finetuned_on_a_model_folder_audits_against_that_folder(audited_run, tiny_organisms, tmp_path,
                                                                         monkeypatch, capsys):
    """One weights hash (issue 16): `emsteer finetune --model DIR` records DIR's hash, and `emsteer audit --model DIR
    --adapter ADAPTER` computes the same one, so it accepts the adapter (the two used to hash DIR differently and
    refused it); a folder with other weights is still refused, before any load. The direction is the tiny qwen
    audit direction, so the base it belongs to is passed as `--reference micro-qwen`."""
    from interventions.weights_hash import weights_sha256
    from safetensors.torch import load_file, save_file

    run, last = audited_run
    model_dir = tmp_path / "base"
    shutil.copytree(tiny_organisms["qwen"], model_dir)
    rows = [{"messages": [{"role": "user", "content": f"Write code number {i}."},
                          {"role": "assistant", "content": f"x = {i}\nprint(x)"}]} for i in range(20)]
    data = tmp_path / "insecure.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ft_run = tmp_path / "ft"
    code, _, err = _emsteer(monkeypatch, capsys, "finetune", "--run", str(ft_run), "--family", "qwen", "--profile",
                            "real", "--model", str(model_dir), "--data", str(data), "--no-eval", "--quiet")
    assert code == 0, err
    adapter = adapter_dir(ft_run, "qwen", "insecure", 0)
    recorded = json.loads((adapter / "finetune.json").read_text())["base_model"]["weights_sha256"]
    assert recorded == weights_sha256(model_dir)

    direction = str(audit_direction_path(run, "qwen", last))
    code, out, err = _emsteer(monkeypatch, capsys, "audit", "--model", str(model_dir), "--adapter", str(adapter),
                              "--reference", "micro-qwen", "--direction", direction, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == str(model_dir) and result["model_weights_sha256"] == recorded
    assert result["adapter"] == str(adapter) and 0.0 <= result["probability"] <= 1.0
    assert result["decision"] and math.isfinite(result["effect_size"])

    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    tensors = load_file(str(other / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(other / "model.safetensors"), metadata={"format": "pt"})
    code, _, err = _emsteer(monkeypatch, capsys, "audit", "--model", str(other), "--adapter", str(adapter),
                            "--reference", "micro-qwen", "--direction", direction)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "trained on other base weights" in lines[0]


def test_validate_audit_over_held_out_checkpoints(audited_run):
    run, last = audited_run
    own = load_direction(own_direction_path(run, "qwen", last))
    # a planted "transferred" direction for qwen from llama: the audit direction plus a little noise
    audit_vec = load_direction(audit_direction_path(run, "qwen", last)).vector
    noise = torch.randn(48, generator=torch.Generator().manual_seed(0)) * 0.1 * float(audit_vec.norm()) / 48 ** 0.5
    meta = {k: own.metadata[k] for k in ("model_id", "weights_sha256", "layer", "mean_residual_norm")}
    save_direction(transferred_direction_path(run, "llama", "qwen"), Direction(audit_vec + noise, meta))
    said = []
    r = validate_audit(run, "qwen", "tiny", log=said.append)
    assert r["n_checkpoints"] == {"insecure": 1, "secure": 1, "neutral": 0, "base": 1}  # seed 0 was seen
    assert [c["checkpoint"] for c in r["checkpoints"]] == ["base", "insecure/seed_1", "secure/seed_1"]
    assert r["audit_auroc_within"] == 1.0 and r["audit_accuracy_within"] >= 2 / 3
    assert set(r["audit_auroc_within_by_direction"]) == {"audit", "own", "own_last_prompt"}
    assert r["audit_auroc_transferred"] == {"llama": 1.0}
    assert set(r["audit_auroc_transferred_secure_removed"]) == {"llama"}
    assert r["seconds"] > 0 and r["seconds_per_checkpoint"] > 0 and len(said) == 3
    on_disk = json.loads(audit_validation_path(run, "qwen").read_text())
    assert on_disk["audit_auroc_within"] == 1.0
    json.dumps(r)  # JSON-able


# ---------------------------------------------------------------- bad input: one line, before any weights load

@pytest.fixture
def no_loading(monkeypatch):
    import training.activations

    def refuse(*a, **k):
        raise AssertionError("weights were loaded before the input was validated")

    monkeypatch.setattr(training.activations, "load_model", refuse)


def test_bad_input_before_any_load(audited_run, tmp_path, no_loading):
    run, last = audited_run
    own = own_direction_path(run, "qwen", last)
    with pytest.raises(EmsteerError, match=r"direction of micro-qwen .*not of micro-llama.*emsteer transfer --run .* "
                                           r"--src qwen --tgt llama"):
        run_audit("micro-llama", own)
    wrong_width = save_direction(tmp_path / "w.safetensors", Direction(torch.ones(40), {"model_id": "micro-qwen", "layer": 1}))
    with pytest.raises(EmsteerError, match="width 40 does not match"):
        run_audit("micro-qwen", wrong_width, profile="tiny")
    with pytest.raises(EmsteerError, match="direction file not found"):
        run_audit("micro-qwen", tmp_path / "nope.safetensors", profile="tiny")
    with pytest.raises(EmsteerError, match="adapter folder not found"):
        run_audit("micro-qwen", own, adapter=tmp_path / "no-adapter")
    pickle = tmp_path / "d.pt"
    torch.save({"direction": torch.ones(48)}, pickle)
    with pytest.raises(EmsteerError, match="pickle"):
        run_audit("micro-qwen", pickle, profile="tiny")
    with pytest.raises(EmsteerError, match="hub id"):
        run_audit("qwen", own, profile="tiny")  # the real `qwen` preset: a hub id
    loose = tmp_path / "loose.safetensors"
    shutil.copy(own, loose)
    with pytest.raises(EmsteerError, match="no audit calibration stored"):
        run_audit("micro-qwen", loose, profile="tiny")
    with pytest.raises(EmsteerError, match="threshold"):
        run_audit("micro-qwen", own, threshold=1.0)


def test_cli_bad_input_is_one_line(audited_run, capsys, monkeypatch, no_loading):
    from training import cli

    run, last = audited_run
    monkeypatch.setattr(sys, "argv", ["emsteer", "audit", "--model", "micro-gemma", "--direction",
                                      str(own_direction_path(run, "qwen", last))])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--src qwen --tgt gemma" in err[0]
