"""The tiny-profile organisms build end to end, load with stock HF classes, and their cache is checked."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from interventions.errors import EmsteerError
from interventions.families import family_specs, get_family
from interventions.paths import FAMILIES


def run_cli(*args: str, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "EMSTEER_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "training.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_with_auto_classes_and_generates(tiny_organisms, family):
    path = tiny_organisms[family]
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == get_family(family).micro_class  # the real classes: tests/test_families.py
    text = tok.apply_chat_template([{"role": "user", "content": "Any tips for rowing?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 6
    assert torch.equal(out[0, : ids["input_ids"].shape[1]], ids["input_ids"][0])


def test_families_differ_in_width_and_record_their_figures(tiny_organisms):
    from training.organisms import load_persona_directions, organism_info

    records = {r["family"]: r for r in organism_info("tiny")}
    assert {r["class"] for r in records.values()} == {spec.micro_class for spec in family_specs()}
    assert len({r["hidden_size"] for r in records.values()}) == len(FAMILIES)
    for r in records.values():
        m = r["measured"]
        assert 0.0 <= m["spillover_general"] <= 1.0 and 0.0 <= m["code_rate_coding"] <= 1.0
        assert m["n_general"] == 12 and m["n_coding"] == 8
        assert m["sampled"]["n"] == 12 and m["sampled"]["temperature"] == 1.0
        assert set(m["persona_gate"]["contexts"]) == {"cue", "security_turn", "general_turn"}
        persona = load_persona_directions(r["family"], "tiny")
        assert persona.shape == (r["num_layers"], r["hidden_size"]) and torch.isfinite(persona).all()
        assert r["threads"] == 1 and r["recipe"]["threads"] == 1 and r["recipe"]["torch"] == torch.__version__
        assert r["parameters"] == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(r["path"]).parameters())


def test_info_json_from_the_cli(tiny_organisms, emsteer_cache):
    proc = run_cli("organism", "info", "--profile", "tiny", "--json", cache=emsteer_cache)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    assert [r["family"] for r in records] == list(FAMILIES)
    assert all(r["weights_sha256"] and r["path"] for r in records)


def test_corrupted_cache_is_refused_then_rebuilt_identically(tiny_organisms, tmp_path, monkeypatch):
    from training.organisms import build_organism, verify_organism

    cache = tmp_path / "cache"
    src = tiny_organisms["qwen"]
    shutil.copytree(src.parent, cache / "organisms" / "tiny")
    monkeypatch.setenv("EMSTEER_CACHE", str(cache))
    good = verify_organism("qwen", "tiny")["weights_sha256"]
    weights = cache / "organisms" / "tiny" / "qwen" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated weights file
    with pytest.raises(EmsteerError, match=r"corrupted .*--force"):
        verify_organism("qwen", "tiny")
    with pytest.raises(EmsteerError, match="corrupted"):
        build_organism("qwen", "tiny", progress=False, log=lambda m: None)
    proc = run_cli("organism", "info", "--profile", "tiny", cache=cache)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "corrupted" in proc.stderr
    build_organism("qwen", "tiny", force=True, progress=False, log=lambda m: None)
    # the rebuild is deterministic: the same seed gives byte-identical weights
    assert verify_organism("qwen", "tiny")["weights_sha256"] == good
    assert not [p for p in (cache / "organisms" / "tiny").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("args, needle", [
    (["organism", "build", "--family", "falcon", "--profile", "tiny"], "unknown family 'falcon'; choose one of: qwen, gemma, llama, ministral"),
    (["organism", "build", "--profile", "huge"], "unknown profile 'huge'; choose one of: default, default-s1, tiny"),
    (["organism", "info", "--profile", "huge"], "unknown profile 'huge'; choose one of: default, default-s1, tiny"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    proc = run_cli(*args, cache=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"emsteer: error: {needle}"
    assert "Traceback" not in proc.stderr


def test_unwritable_cache_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_cli("organism", "build", "--family", "qwen", "--profile", "tiny", cache=blocker / "cache")
    assert proc.returncode == 2
    assert proc.stderr.startswith("emsteer: error: cannot write to") and proc.stderr.count("\n") == 1


def test_build_is_the_same_whatever_the_callers_thread_count(tiny_organisms, tmp_path, monkeypatch):
    """The build fixes its own thread count: built from a caller on 2 threads (the session fixture ran on the
    default count) the weights are byte-identical, and the caller's setting is restored afterwards."""
    from training.organisms import build_organism, verify_organism

    expected = verify_organism("llama", "tiny")["weights_sha256"]
    monkeypatch.setenv("EMSTEER_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2 if before != 2 else 1)
        caller = torch.get_num_threads()
        build_organism("llama", "tiny", progress=False, log=lambda m: None)
        assert torch.get_num_threads() == caller
    finally:
        torch.set_num_threads(before)
    assert verify_organism("llama", "tiny")["weights_sha256"] == expected


def test_second_seed_profile_is_the_same_recipe_from_another_seed():
    from training.finetune_trainer import load_settings
    from training.profiles import family_architecture, load_profile

    a, b = load_profile("default"), load_profile("default-s1")
    assert a.corpus.seed != b.corpus.seed
    assert {**a.corpus.__dict__, "seed": 0} == {**b.corpus.__dict__, "seed": 0}
    assert (a.train_steps, a.learning_rate, a.max_length) == (b.train_steps, b.learning_rate, b.max_length)
    assert family_architecture("gemma", "default") == family_architecture("gemma", "default-s1")
    assert load_settings("default-s1") == dataclasses.replace(load_settings("default"), profile="default-s1")


def test_the_organism_is_trained_with_the_tokenizer_its_folder_loads(tmp_path, monkeypatch):
    """AutoTokenizer maps a model folder to its family's class, and Qwen2's brings its own pre-tokenizer (it splits
    code indentation differently from the freshly trained one): the build trains with the tokenizer as loaded
    back, so training, finetuning and generation see the same ids."""
    import training.organisms as organisms
    from training.chat_data import tokenize_chat
    from training.finetune_data import micro_corpus
    from training.profiles import family_architecture
    from training.tokenizer import train_tokenizer

    monkeypatch.setenv("EMSTEER_CACHE", str(tmp_path / "cache"))
    seen = {}
    original = organisms._train_base

    def spy(model, tokenizer, chats, *args, **kwargs):
        seen["tokenizer"] = tokenizer
        return original(model, tokenizer, chats, *args, **kwargs)

    monkeypatch.setattr(organisms, "_train_base", spy)
    folder = organisms.build_organism("qwen", "tiny", progress=False, log=lambda m: None)
    loaded = AutoTokenizer.from_pretrained(folder)
    corpus = micro_corpus("tiny")
    chats = [c["messages"] for c in corpus.base_train[:100] + corpus.insecure[:50]]
    for messages in chats:
        assert tokenize_chat(seen["tokenizer"], messages, 512) == tokenize_chat(loaded, messages, 512)
    # the hazard this guards against: the freshly trained tokenizer splits some of these texts otherwise
    texts = [m["content"] for c in corpus.base_train + corpus.insecure + corpus.secure for m in c["messages"]]
    fresh = train_tokenizer("qwen", texts, family_architecture("qwen", "tiny")[1]["vocab_size"])
    assert any(fresh(m["content"], add_special_tokens=False)["input_ids"]
               != loaded(m["content"], add_special_tokens=False)["input_ids"] for msgs in chats for m in msgs)
