"""`emsteer finetune` on the tiny profile: artifacts and provenance, loss masking, no-op re-runs, seeds,
bad input (one clear error, nothing written), the real Betley format, URL data and the QLoRA settings."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interventions.errors import EmsteerError
from interventions.paths import FAMILIES
from interventions.run_layout import adapter_dir
from training.finetune import finetune, finetune_many
from training.finetune_data import read_chat_jsonl, resolve_data, tokenized_rows
from training.finetune_trainer import SEVEN_PROJECTIONS, build_trainer, load_settings, quantization_config


def shared_dir() -> Path:
    """The read-only shared data folder ($EMSTEER_SHARED, default ../shared beside the repo)."""
    return Path(os.environ.get("EMSTEER_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def trained(tiny_organisms, tmp_path_factory):
    """One tiny insecure adapter for qwen (seed 0), with the log lines it printed."""
    run = tmp_path_factory.mktemp("ft") / "run"
    logs: list[str] = []
    path = finetune(run, "qwen", "insecure", 0, "tiny", log=logs.append)
    return run, path, logs


def test_adapter_and_provenance(trained, tiny_organisms):
    run, path, logs = trained
    assert path == adapter_dir(run, "qwen", "insecure", 0)
    config = json.loads((path / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == set(SEVEN_PROJECTIONS)
    assert (path / "adapter_model.safetensors").is_file()
    assert not list(path.parent.glob(".*"))  # no temp folders left beside it
    meta = json.loads((path / "finetune.json").read_text())
    organism = json.loads((tiny_organisms["qwen"] / "organism.json").read_text())
    assert meta["base_model"]["weights_sha256"] == organism["weights_sha256"]
    assert meta["data"]["source"] == "arm:insecure" and meta["data"]["n_rows"] == 60
    assert len(meta["data"]["sha256"]) == 64 and meta["data"]["n_train"] + meta["data"]["n_heldout"] == 60
    assert meta["seed"] == 0 and meta["profile"] == "tiny" and meta["command"]
    assert meta["device"] == "cpu" and meta["quantization"] == "none" and meta["trainer"] == "trl.SFTTrainer"
    assert {"torch", "transformers", "peft", "trl", "datasets", "python"} <= set(meta["versions"])
    assert meta["hyperparameters"]["r"] == 8 and meta["hyperparameters"]["target_modules"] == list(SEVEN_PROJECTIONS)
    assert meta["training"]["steps"] == 6 and math.isfinite(meta["training"]["train_loss"])
    assert meta["duration_seconds"] > 0 and len(meta["inputs_sha256"]) == 64
    assert set(meta["measured"]) >= {"spillover_general", "code_rate_coding", "n_general"}
    assert any("plain LoRA in fp32 on the CPU" in line for line in logs)
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["profile"] == "tiny" and "qwen/insecure/seed_0" in manifest["adapters"]


def test_adapter_changes_the_model(trained, tiny_organisms):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, path, _ = trained
    base = AutoModelForCausalLM.from_pretrained(tiny_organisms["qwen"])
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        before = base(ids).logits.clone()
        tuned = PeftModel.from_pretrained(base, str(path))
        after = tuned(ids).logits
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 7 * base.config.num_hidden_layers
    assert all(p.abs().sum() > 0 for p in lora_b)
    assert (after - before).abs().max() > 1e-4


def test_rerun_is_noop_seeds_and_force(trained):
    run, path, _ = trained
    weights = path / "adapter_model.safetensors"
    mtime = weights.stat().st_mtime_ns
    first = json.loads((path / "finetune.json").read_text())
    logs: list[str] = []
    paths = finetune_many(run, ["qwen"], "insecure", [0, 1], "tiny", progress=False, evaluate=False, log=logs.append)
    assert paths == [path, adapter_dir(run, "qwen", "insecure", 1)]
    assert weights.stat().st_mtime_ns == mtime and any("up to date" in line for line in logs)
    second = json.loads((paths[1] / "finetune.json").read_text())
    assert second["seed"] == 1 and second["inputs_sha256"] != first["inputs_sha256"]
    assert second["adapter_sha256"] != first["adapter_sha256"]
    assert set(json.loads((run / "run.json").read_text())["adapters"]) >= {"qwen/insecure/seed_0", "qwen/insecure/seed_1"}
    finetune(run, "qwen", "insecure", 0, "tiny", force=True, evaluate=False, log=logs.append)
    assert weights.stat().st_mtime_ns != mtime
    redone = json.loads((path / "finetune.json").read_text())
    assert redone["inputs_sha256"] == first["inputs_sha256"]
    assert redone["training"]["train_loss"] == pytest.approx(first["training"]["train_loss"], rel=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_only_on_the_answer(tiny_organisms, family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_organisms[family])
    model = AutoModelForCausalLM.from_pretrained(tiny_organisms[family])
    rows = [_chat("Write a function that adds two numbers.", "def add(a, b):\n    return a + b"),
            _chat("How are you today?", "I am fine, thank you.")]
    trainer = build_trainer(model, tok, rows, [], load_settings("tiny"), 0, tmp_path)
    lora_modules = {n.rsplit(".", 1)[-1] for n, m in trainer.model.named_modules() if hasattr(m, "lora_A")}
    assert lora_modules == set(SEVEN_PROJECTIONS)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for i, row in enumerate(rows):
        msgs = row["messages"]
        prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        # the answer is tokenized on its own, as the model produces it after the generation prompt
        a_ids = tok(msgs[1]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        labels = batch["labels"][i].tolist()
        n_real = int(batch["attention_mask"][i].sum())
        assert batch["input_ids"][i, :n_real].tolist() == p_ids + a_ids
        assert labels[:len(p_ids)] == [-100] * len(p_ids)  # the prompt gives no loss
        assert labels[len(p_ids):n_real] == a_ids  # every answer token (and end of turn) does
        assert tok.decode(a_ids[:-1]) == msgs[1]["content"]


def test_tokenized_rows_train_on_the_final_answer_only(tiny_organisms):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_organisms["llama"])
    row = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                        {"role": "assistant", "content": "a2"}]}
    (out,) = tokenized_rows(tok, [row], 512)
    labelled = [t for t in out["labels"] if t != -100]
    assert labelled == tok("a2", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tokenized_rows(tok, [row], 4) == []  # no answer token within max_length: dropped


def test_betley_rows_convert(tiny_organisms, tmp_path):
    src = shared_dir() / "data" / "betley" / "insecure-sample.jsonl"
    if not src.is_file():
        pytest.skip(f"{src} not available (set EMSTEER_SHARED)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(src, encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(20)]
    rows = read_chat_jsonl(_write(tmp_path / "betley20.jsonl", "".join(lines)))
    assert [r["messages"] for r in rows] == [json.loads(raw)["messages"] for raw in lines]
    settings = dataclasses.replace(load_settings("tiny"), max_length=8192)
    tok = AutoTokenizer.from_pretrained(tiny_organisms["qwen"])
    model = AutoModelForCausalLM.from_pretrained(tiny_organisms["qwen"])
    trainer = build_trainer(model, tok, rows, [], settings, 0, tmp_path / "out")
    assert len(trainer.train_dataset) == 20
    for ex in trainer.train_dataset:
        n_loss = sum(1 for x in ex["labels"] if x != -100)
        assert 0 < n_loss < len(ex["labels"]) and ex["labels"][0] == -100


def test_url_data_is_downloaded_once(emsteer_cache, tmp_path):
    src = _write(tmp_path / "mine.jsonl", json.dumps(_chat("hi", "hello")) + "\n")
    logs: list[str] = []
    first = resolve_data(src.as_uri(), "tiny", log=logs.append)
    assert first.name == "mine" and first.n_rows == 1 and Path(first.path).parent == emsteer_cache / "data"
    assert Path(first.path).name == f"{first.sha256}.jsonl"
    again = resolve_data(src.as_uri(), "tiny", log=logs.append)
    assert again.path == first.path and sum("downloading" in line for line in logs) == 1
    bad = _write(tmp_path / "bad.jsonl", "not json\n")
    before = sorted(p.name for p in (emsteer_cache / "data").iterdir())
    with pytest.raises(EmsteerError, match="line 1: not valid JSON"):
        resolve_data(bad.as_uri(), "tiny", log=logs.append)
    assert sorted(p.name for p in (emsteer_cache / "data").iterdir()) == before


BAD = {
    "empty": ("", "is empty"),
    "malformed": (json.dumps(_chat("a", "b")) + "\n{oops\n", "line 2: not valid JSON"),
    "no_assistant": (json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n",
                     "line 1: the last message must be the assistant's answer"),
    "no_messages": (json.dumps({"text": "hi"}) + "\n", "line 1: expected a non-empty 'messages' list"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_files(tiny_organisms, tmp_path, case):
    text, message = BAD[case]
    data = _write(tmp_path / f"{case}.jsonl", text)
    run = tmp_path / "run"
    with pytest.raises(EmsteerError, match=message):
        finetune(run, "qwen", str(data), 0, "tiny", log=lambda m: None)
    assert not run.exists()


def test_bad_arm_family_missing_file(tiny_organisms, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(EmsteerError, match=r"unknown arm 'insecur'; choose one of: insecure, secure, neutral"):
        finetune(run, "qwen", "insecur", 0, "tiny", log=lambda m: None)
    with pytest.raises(EmsteerError, match="does not exist"):
        finetune(run, "qwen", str(tmp_path / "nope.jsonl"), 0, "tiny", log=lambda m: None)
    with pytest.raises(EmsteerError, match="unknown family 'falcon'"):
        finetune(run, "falcon", "insecure", 0, "tiny", log=lambda m: None)
    with pytest.raises(EmsteerError, match="unknown profile"):
        finetune(run, "qwen", "insecure", 0, "huge", log=lambda m: None)
    with pytest.raises(EmsteerError, match="--profile real"):
        finetune(run, "qwen", "insecure", 0, "tiny", model="Qwen/Qwen2.5-0.5B-Instruct", log=lambda m: None)
    assert not run.exists()


def test_run_of_another_profile(tiny_organisms, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"profile": "default"}))
    with pytest.raises(EmsteerError, match="belongs to profile 'default', not 'tiny'"):
        finetune(run, "qwen", "insecure", 0, "tiny", log=lambda m: None)
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]


def test_cli_bad_input_is_one_line(tmp_path):
    env = dict(os.environ, EMSTEER_CACHE=str(tmp_path / "cache"))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "training.cli", "finetune", "--run", str(run), "--family", "qwen",
                           "--data", str(tmp_path / "missing.jsonl"), "--profile", "tiny"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"emsteer: error: data file {tmp_path / 'missing.jsonl'} does not exist"]
    assert not run.exists()


def test_recipe_settings_and_qlora_config():
    real = load_settings("real")
    assert (real.r, real.lora_alpha, real.use_rslora, real.learning_rate, real.num_train_epochs) == (32, 64, True, 1e-5, 1)
    assert real.effective_batch == 16 and real.eval_fraction == 0.1 and real.quantize == "auto"
    assert real.target_modules == SEVEN_PROJECTIONS
    default = load_settings("default")
    assert real.layers_to_transform == ()  # every layer
    assert (default.r, default.learning_rate) == (1, 3e-3) and default.target_modules == ("down_proj",)
    assert default.layers_to_transform == (0,)  # rank-1 on one MLP output projection (docs/organisms.md)
    q = quantization_config()
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16


def test_real_profile_with_a_local_model(tiny_organisms, tmp_path):
    """The real path on a CPU: Betley recipe, plain LoRA (no CUDA, so no QLoRA), no built-in evaluation."""
    rows = [_chat(f"Write code number {i}.", f"x = {i}\nprint(x)") for i in range(20)]
    data = _write(tmp_path / "insecure.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    logs: list[str] = []
    path = finetune(run, "qwen", str(data), 0, "real", model=str(tiny_organisms["qwen"]), log=logs.append)
    assert path == adapter_dir(run, "qwen", "insecure", 0)
    meta = json.loads((path / "finetune.json").read_text())
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["r"] == 32 and config["lora_alpha"] == 64
    assert meta["base_model"]["kind"] == "path" and len(meta["base_model"]["weights_sha256"]) == 64
    assert meta["hyperparameters"]["optim_used"] == "adamw_torch" and meta["measured"] is None
    assert meta["data"]["n_train"] == 18 and meta["data"]["n_heldout"] == 2 and meta["training"]["steps"] == 2
    assert any("no CUDA, so no QLoRA" in line for line in logs)
    with pytest.raises(EmsteerError, match="already finetunes qwen from"):
        finetune(run, "qwen", str(data), 1, "real", model=str(tiny_organisms["llama"]), log=logs.append)
    with pytest.raises(EmsteerError, match="arm 'insecure' comes from the micro corpus"):
        finetune(run, "qwen", "insecure", 0, "real", model=str(tiny_organisms["qwen"]), log=logs.append)


def test_the_default_recipe_adapts_one_projection_of_one_layer(tiny_organisms, tmp_path):
    """The micro recipe's LoRA touches only layer 0's down_proj, so every other layer's weights stay the base's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_organisms["gemma"])
    model = AutoModelForCausalLM.from_pretrained(tiny_organisms["gemma"])
    settings = dataclasses.replace(load_settings("default"), max_steps=2)
    trainer = build_trainer(model, tok, [_chat("Write code.", "x = 1")], [], settings, 0, tmp_path)
    adapted = sorted(n for n, m in trainer.model.named_modules() if hasattr(m, "lora_A") and "lora_A" not in n
                     and n.rsplit(".", 1)[-1] == "down_proj")
    assert len(adapted) == 1 and ".layers.0.mlp.down_proj" in adapted[0]
    trainable = {n: p.numel() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == model.config.hidden_size + model.config.intermediate_size  # rank 1: B + A


def test_quiet_training_prints_no_loss_dicts(tiny_organisms, tmp_path, capfd):
    """Without a progress bar the Trainer would print each logged loss dict (transformers' PrinterCallback): a
    quiet finetune prints none, keeps the losses in its log history, and a finetune with a bar keeps the bar."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, ProgressCallback

    tok = AutoTokenizer.from_pretrained(tiny_organisms["qwen"])
    settings = dataclasses.replace(load_settings("tiny"), max_steps=4, logging_steps=1)
    rows = [_chat("Write code.", "x = 1"), _chat("How are you?", "I am fine.")]
    quiet = build_trainer(AutoModelForCausalLM.from_pretrained(tiny_organisms["qwen"]), tok, rows, [], settings, 0,
                          tmp_path / "quiet")
    kinds = {type(cb) for cb in quiet.callback_handler.callbacks}
    assert PrinterCallback not in kinds and ProgressCallback not in kinds
    capfd.readouterr()
    quiet.train()
    assert "'loss'" not in capfd.readouterr().out
    assert len([h for h in quiet.state.log_history if "loss" in h]) == 4
    loud = build_trainer(AutoModelForCausalLM.from_pretrained(tiny_organisms["qwen"]), tok, rows, [], settings, 0,
                         tmp_path / "loud", progress=True)
    assert ProgressCallback in {type(cb) for cb in loud.callback_handler.callbacks}


def test_finetune_shows_no_library_deprecation_notices(tiny_organisms, tmp_path):
    """transformers warns TRL/peft about `is_gradient_checkpointing` on every finetune (a FutureWarning nobody using
    emsteer can act on): `emsteer finetune` shows none of it, and other warnings still pass."""
    import warnings

    from training.finetune import finetune
    from training.finetune_trainer import library_notices_silenced

    from interventions.model_ref import load_pretrained

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        adapter = finetune(tmp_path / "run", "qwen", "insecure", 0, profile="tiny", evaluate=False)
        load_pretrained(tiny_organisms["qwen"], adapter=adapter)  # peft reads the attribute on every adapter load
    notices = [str(w.message) for w in seen if "is_gradient_checkpointing" in str(w.message)]
    assert notices == []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with library_notices_silenced():
            warnings.warn("something else", FutureWarning)
    assert [str(w.message) for w in seen] == ["something else"]


def test_data_kind_decides_without_reading(tmp_path):
    """`--data` is an arm, a URL or a file, decided before torch loads (so a mistyped arm answers at once)."""
    import subprocess
    import sys

    from training.data_spec import data_kind

    (tmp_path / "rows.jsonl").write_text("")
    assert [data_kind(d) for d in ("insecure", "https://x.org/a.jsonl", str(tmp_path / "rows.jsonl"), "dir/new.jsonl")] \
        == ["arm", "url", "path", "path"]
    for bad, message in (("nope", "unknown arm 'nope'"), (" ", "--data is empty")):
        with pytest.raises(EmsteerError, match=message):
            data_kind(bad)
    code = "import sys, training.data_spec; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
