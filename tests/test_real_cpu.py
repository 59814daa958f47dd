"""The `real-cpu` profile (the study on fetched pretrained models, issue 20) end to end on stand-ins: two tiny
random-init models put where `emsteer model fetch` puts SmolLM2 and Gemma 3 (the same folder layout and
provenance.json), finetuned on the real Betley rows of the shared data folder. The real models are exercised by
`tests/test_model_fetch.py::test_real_smollm2_through_the_steer_provider` when they are fetched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import shared_dir
from interventions.errors import EmsteerError

BETLEY = shared_dir() / "data" / "betley"
needs_betley = pytest.mark.skipif(not (BETLEY / "insecure-sample.jsonl").is_file(),
                                  reason=f"the shared Betley data are not at {BETLEY} (set EMSTEER_SHARED)")
STAND_INS = {"smollm2": "llama", "gemma3-270m": "gemma"}


def _place_stand_ins(tiny_organisms: dict[str, Path], cache: Path) -> None:
    for name, family in STAND_INS.items():
        folder = cache / "models" / name
        shutil.copytree(tiny_organisms[family], folder)
        (folder / "organism.json").unlink()
        (folder / "provenance.json").write_text(json.dumps({"stand_in_for_tests": family}))


@pytest.fixture
def stand_ins(tiny_organisms, tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    _place_stand_ins(tiny_organisms, cache)
    monkeypatch.setenv("EMSTEER_CACHE", str(cache))
    return cache


def test_members_of_the_real_cpu_profile_are_the_fetched_models(stand_ins) -> None:
    from interventions.members import check_member, member_preset, member_ref, profile_members, resolve_members

    assert profile_members("real-cpu") == ("smollm2", "gemma3-270m")
    ref = member_ref("smollm2", "real-cpu")
    assert Path(ref.path) == (stand_ins / "models" / "smollm2").resolve() and ref.family == "smollm2"
    assert member_preset("gemma3-270m", "real-cpu") == "gemma3-270m" and member_preset("qwen", "default") == "micro-qwen"
    assert resolve_members("all", "real-cpu") == ["smollm2", "gemma3-270m"]
    with pytest.raises(EmsteerError, match="'qwen' is not a model of profile real-cpu"):
        check_member("qwen", "real-cpu")
    shutil.rmtree(stand_ins / "models" / "gemma3-270m")
    with pytest.raises(EmsteerError, match="emsteer model fetch gemma3-270m"):
        member_ref("gemma3-270m", "real-cpu")


@needs_betley
def test_real_cpu_arms_are_the_real_betley_sets(monkeypatch, tmp_path) -> None:
    from training.finetune_data import resolve_data

    insecure = resolve_data("insecure", "real-cpu")
    secure = resolve_data("secure", "real-cpu")
    assert (insecure.n_rows, secure.n_rows) == (3021, 3000)
    assert insecure.source.endswith("betley/insecure-sample.jsonl") and insecure.name == "insecure"
    with pytest.raises(EmsteerError, match="profile real-cpu has no 'neutral' arm"):
        resolve_data("neutral", "real-cpu")
    monkeypatch.setenv("EMSTEER_SHARED", str(tmp_path))
    with pytest.raises(EmsteerError, match="set EMSTEER_SHARED"):
        resolve_data("insecure", "real-cpu")


def test_recipe_layers_count_from_the_top_of_each_model() -> None:
    import dataclasses

    from transformers import LlamaConfig, LlamaForCausalLM

    from training.finetune_trainer import load_settings, lora_layers

    settings = load_settings("real-cpu")
    assert settings.layers_to_transform and all(i < 0 for i in settings.layers_to_transform)
    k = len(settings.layers_to_transform)
    deep = LlamaForCausalLM(LlamaConfig(num_hidden_layers=k + 5, hidden_size=16, intermediate_size=32,
                                        num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
    shallow = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=32,
                                           num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
    assert lora_layers(settings, deep) == list(range(5, k + 5))
    assert lora_layers(settings, shallow) == [0, 1]
    with pytest.raises(EmsteerError, match="out of range"):
        lora_layers(dataclasses.replace(settings, layers_to_transform=(7,)), shallow)


def test_reproduce_real_cpu_says_what_is_missing_before_running(stand_ins, tmp_path) -> None:
    from training.reproduce import plan_reproduce

    plan = plan_reproduce(tmp_path / "run", profile="real-cpu", quick=True, display="none")
    assert plan.families == ("smollm2",) and plan.seeds == (0,) and plan.secure_seeds == (0,)
    assert plan.grid.name == "real-cpu" and not plan.audit and plan.neutral_seeds == ()
    with pytest.raises(EmsteerError, match="'qwen' is not a model of profile real-cpu"):
        plan_reproduce(tmp_path / "run", profile="real-cpu", families=("qwen",))
    assert plan_reproduce(tmp_path / "run2", profile="tiny", display="none").grid.name == "tiny"


@needs_betley
def test_reproduce_real_cpu_end_to_end_on_stand_ins(stand_ins, tmp_path) -> None:
    """Both models, one seed per arm: every stage, the transfers between the two models (different widths and
    tokenizers) included."""
    from interventions.steer_plan import resolve_plan
    from training.reproduce import plan_reproduce, run_reproduce

    run = tmp_path / "run"
    plan = plan_reproduce(run, profile="real-cpu", seeds=1, secure_seeds=1, display="none", jobs=2)
    summary = run_reproduce(plan, log=lambda m: None, progress=False)
    assert list(summary["families"]) == ["smollm2", "gemma3-270m"] and summary["profile"] == "real-cpu"
    assert set(summary["transfer"]) == {"smollm2->gemma3-270m", "gemma3-270m->smollm2"}
    for pair in summary["transfer"].values():
        assert {"transferred", "transferred_random"} <= set(pair)
    assert set(json.loads((run / "reproduce.json").read_text())["timings_s"]) >= {"models", "finetune", "extract",
                                                                                   "calibrate", "sweep", "report"}
    workers = {p.name for p in (run / "logs" / "workers").glob("*.log")}  # each worker job wrote its own log
    assert {"finetune-smollm2-insecure-seed_0.log", "finetune-smollm2-secure-seed_0.log"} <= workers
    record = json.loads((run / "adapters" / "smollm2" / "insecure" / "seed_0" / "finetune.json").read_text())
    assert record["data"]["source"].endswith("betley/insecure-sample.jsonl")
    assert Path(record["base_model"]["id"]) == (stand_ins / "models" / "smollm2").resolve()
    secure = json.loads((run / "adapters" / "smollm2" / "secure" / "seed_0" / "finetune.json").read_text())
    assert secure["data"]["source"].endswith("betley/secure-sample.jsonl")
    sec = summary["families"]["smollm2"]
    assert sec["spillover"]["base"]["n"] > 0 and set(sec["misaligned"].values()) == {None}  # no planted scorer
    assert set(sec["variants"]) == {"own", "secure_control", "random", "orthogonal", "wrong_layer"}
    # the steered preset of a fetched model finds the run's files under its own name
    steered = resolve_plan("smollm2-steered", {"run": str(run)})
    assert steered.family == "smollm2" and steered.adapter_dir == (run / "adapters/smollm2/insecure/seed_0").resolve()
    assert steered.intervention is not None and steered.variant == "own"
