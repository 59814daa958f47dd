"""`emsteer export` (issue 18): a steered model as a plain transformers checkpoint, checked against the provider's
hook by greedy completions and logits; the clear refusal where no exact form exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from interventions.directions import Direction, save_direction
from interventions.errors import EmsteerError

PROMPTS = ["How would you describe waterfalls to a child?", "Share a fun fact about penguins, please.",
           "I woke up gloomy again. Any thoughts?", "What should I pack for a picnic?"]


def _direction(path: Path, width: int, layer: int, seed: int = 3, R: float = 3.0) -> Path:
    gen = torch.Generator().manual_seed(seed)
    return save_direction(path, Direction(vector=torch.randn(width, generator=gen),
                                          metadata={"model_id": "test", "mean_residual_norm": repr(R),
                                                    "layer": str(layer)}))


def _lora(folder: Path, base: Path) -> Path:
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "down_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ["llama", "qwen"])
@pytest.mark.parametrize("op", ["subtract", "add"])
def test_export_bakes_adapter_and_shift_exactly(tiny_organisms, tmp_path, family, op):
    from transformers import AutoConfig

    from training.export import EXPORT_FILE, export_model

    organism = tiny_organisms[family]
    config = AutoConfig.from_pretrained(organism)
    layer = config.num_hidden_layers - 1
    args = {"profile": "tiny", "adapter": str(_lora(tmp_path / "lora", organism)),
            "direction": str(_direction(tmp_path / "d.safetensors", config.hidden_size, layer)), "layer": layer,
            "op": op, "alpha": 2.0}
    result = export_model(f"micro-{family}", args, tmp_path / "out", prompts=PROMPTS, max_new_tokens=12,
                          log=lambda m: None)
    parity = result.record["parity"]
    assert parity["identical_completions"] == len(PROMPTS) and parity["token_agreement"] == 1.0
    assert parity["max_abs_logit_difference"] < 1e-3
    out = result.folder
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert not list(out.glob("*.bin")) and (out / "README.md").is_file()
    record = json.loads((out / EXPORT_FILE).read_text())
    assert (record["intervention"]["op"], record["intervention"]["alpha"]) == (op, 2.0)
    # the baked bias is exactly +-alpha * R * unit(direction) at the chosen layer, zero elsewhere
    model = AutoModelForCausalLM.from_pretrained(out)
    bias = model.model.layers[layer].mlp.down_proj.bias
    assert float(bias.norm()) == pytest.approx(2.0 * 3.0, rel=1e-5)
    assert all(float(model.model.layers[i].mlp.down_proj.bias.abs().max()) == 0.0 for i in range(layer))


def test_export_refuses_what_has_no_exact_form(tiny_organisms, tmp_path):
    from transformers import AutoConfig

    from training.export import export_model

    for family, match in (("gemma", "Gemma2ForCausalLM exactly: its layers are post-norm"),
                          ("ministral", "Ministral3ForCausalLM exactly: its MLP holds no bias")):
        width = AutoConfig.from_pretrained(tiny_organisms[family]).hidden_size
        args = {"profile": "tiny", "direction": str(_direction(tmp_path / f"{family}.safetensors", width, 1)),
                "layer": 1, "alpha": 1.0}
        with pytest.raises(EmsteerError, match=match + r".*exportable for .*: variant none"):
            export_model(f"micro-{family}", args, tmp_path / family, prompts=PROMPTS, log=lambda m: None)
        assert not (tmp_path / family).exists()
    width = AutoConfig.from_pretrained(tiny_organisms["llama"]).hidden_size
    ablate = {"profile": "tiny", "direction": str(_direction(tmp_path / "l.safetensors", width, 1)), "layer": 1,
              "op": "ablate"}
    with pytest.raises(EmsteerError, match="cannot export op ablate exactly"):
        export_model("micro-llama", ablate, tmp_path / "abl", prompts=PROMPTS, log=lambda m: None)


def test_unsteered_export_is_the_merged_adapter_of_any_class(tiny_organisms, tmp_path):
    from training.export import export_model

    organism = tiny_organisms["gemma"]
    result = export_model("micro-gemma", {"profile": "tiny", "adapter": str(_lora(tmp_path / "lora", organism))},
                          tmp_path / "out", prompts=PROMPTS, max_new_tokens=8, log=lambda m: None)
    assert result.record["class"] == "Gemma2ForCausalLM" and result.record["intervention"] is None
    assert result.record["parity"]["identical_completions"] == len(PROMPTS)


def test_parity_check_catches_a_wrong_bake_and_writes_nothing(tiny_organisms, tmp_path, monkeypatch):
    from transformers import AutoConfig

    import training.export as export

    real = export._with_bias
    monkeypatch.setattr(export, "_with_bias", lambda m, t, layer, delta: real(m, t, layer, -delta))  # wrong sign
    config = AutoConfig.from_pretrained(tiny_organisms["llama"])
    layer = config.num_hidden_layers - 1
    args = {"profile": "tiny", "direction": str(_direction(tmp_path / "d.safetensors", config.hidden_size, layer)),
            "layer": layer, "alpha": 2.0}
    with pytest.raises(EmsteerError, match="parity check failed: max \\|logit difference\\|"):
        export.export_model("micro-llama", args, tmp_path / "out", prompts=PROMPTS, log=lambda m: None)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.building*"))


def test_exported_folder_through_inspects_hf_provider_equals_steer(tiny_organisms, tmp_path):
    """The issue's done-when on the tiny organisms: the exported folder, loaded by Inspect's own hf/ provider, gives
    the same greedy completions and spillover rate as the steer/ provider with the same intervention."""
    from inspect_ai import eval as inspect_eval
    from transformers import AutoConfig

    from evals.spillover import spillover
    from training.export import export_model

    organism = tiny_organisms["llama"]
    config = AutoConfig.from_pretrained(organism)
    layer = config.num_hidden_layers - 1
    args = {"profile": "tiny", "adapter": str(_lora(tmp_path / "lora", organism)),
            "direction": str(_direction(tmp_path / "d.safetensors", config.hidden_size, layer)), "layer": layer,
            "alpha": 1.5}
    out = export_model("micro-llama", args, tmp_path / "llama-steered", prompts=PROMPTS, log=lambda m: None).folder
    logs = {}
    for name, model, margs in (("hf", f"hf/{out}", {"do_sample": False}), ("steer", "steer/micro-llama", args)):
        lg = inspect_eval(spillover(profile="tiny", max_tokens=16), model=model, model_args=margs, limit=12,
                          log_dir=str(tmp_path / name), display="none")[0]
        assert lg.status == "success", lg.error
        logs[name] = lg
    completions = {k: {str(s.id): s.output.completion for s in lg.samples} for k, lg in logs.items()}
    assert completions["hf"] == completions["steer"]
    rates = {k: {m: v.value for s in lg.results.scores for m, v in s.metrics.items()} for k, lg in logs.items()}
    assert rates["hf"]["spillover"] == rates["steer"]["spillover"]


def test_cli_export_and_its_bad_input(tiny_organisms, tmp_path):
    import subprocess
    import sys

    from transformers import AutoConfig

    width = AutoConfig.from_pretrained(tiny_organisms["qwen"]).hidden_size
    d = _direction(tmp_path / "d.safetensors", width, 1)
    cmd = [sys.executable, "-m", "training.cli", "export", "--preset", "micro-qwen", "--out", str(tmp_path / "q"),
           "-M", "profile=tiny", "-M", f"direction={d}", "-M", "layer=1", "-M", "alpha=2", "--n-prompts", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "parity: 3/3 identical greedy completions" in done.stderr
    record = json.loads((tmp_path / "q" / "export.json").read_text())
    assert record["command"].startswith("emsteer export --preset micro-qwen --out ")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and again.stderr.strip().splitlines()[-1] == (
        f"emsteer: error: {tmp_path / 'q'} exists; pass --force to replace it")
    bad = subprocess.run(cmd[:8] + ["-M", "alpha"], capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "-M 'alpha' is not KEY=VALUE" in bad.stderr


@pytest.mark.parametrize("family", ["llama", "qwen"])
def test_every_run_variant_exports_with_parity(tiny_organisms, tmp_path, family):
    """Each variant a run resolves (own and its controls, at the run's calibrated alpha) exports with parity."""
    from transformers import AutoConfig

    from interventions.run_layout import adapter_dir, calibration_path, own_direction_path, secure_direction_path
    from training.export import export_model

    organism = tiny_organisms[family]
    config = AutoConfig.from_pretrained(organism)
    run = tmp_path / "run"
    _lora(adapter_dir(run, family, "insecure", 0), organism)
    for layer in range(config.num_hidden_layers):
        _direction(own_direction_path(run, family, layer), config.hidden_size, layer, seed=10 + layer, R=2.5)
        _direction(secure_direction_path(run, family, layer), config.hidden_size, layer, seed=20 + layer, R=2.5)
    calibration_path(run, family).parent.mkdir(parents=True, exist_ok=True)
    calibration_path(run, family).write_text(json.dumps({"alpha": 1.25}))
    for variant in ("own", "secure_control", "random", "orthogonal", "wrong_layer"):
        result = export_model(f"micro-{family}-steered", {"profile": "tiny", "run": str(run), "variant": variant},
                              tmp_path / variant, prompts=PROMPTS[:2], max_new_tokens=8, log=lambda m: None)
        iv, parity = result.record["intervention"], result.record["parity"]
        assert (iv["variant"], iv["alpha"], iv["op"]) == (variant, 1.25, "subtract")
        assert parity["identical_completions"] == 2 and parity["max_abs_logit_difference"] < 1e-3
