"""The Inspect `steer` provider on the tiny micro organisms and on prompt-sensitive random models.

The tiny organisms answer every prompt alike, so the numeric comparisons (batched vs unbatched, steering,
sampling, monitor) also run on random-init models of the same architecture (tokenizer and chat template
copied from the organism), whose completions differ from prompt to prompt and sometimes stop early."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
import torch
from inspect_ai import eval as inspect_eval
from inspect_ai.analysis import samples_df
from inspect_ai.model import ChatMessageUser, get_model
from peft import LoraConfig, get_peft_model
from tokenizers import processors
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from evals.spillover import spillover
from interventions import model_loading
from interventions.directions import Direction, sha256_file, save_direction
from interventions.errors import EmsteerError
from interventions.generation import encode_batch, render_chat
from interventions.paths import FAMILIES, organism_dir
from interventions.run_layout import adapter_dir, calibration_path, own_direction_path
from interventions.steer_plan import resolve_plan

MAX_TOKENS = 24


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and shared CPUs thrash with more); session scope so the
    organism build runs on one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_model(family: str, dst: Path, seed: int = 0, init: float = 0.2) -> Path:
    """A random-init model of the tiny organism's architecture, with its tokenizer and generation config.

    The end-of-turn token's output row copies that of the token greedy decoding emits most often (after the
    first two steps), so some completions stop early and others run to max_tokens."""
    src = organism_dir(family, "tiny")
    config = AutoConfig.from_pretrained(src)
    config.initializer_range = init
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config = AutoModelForCausalLM.from_pretrained(src).generation_config
    tok = AutoTokenizer.from_pretrained(src)
    counts: collections.Counter[int] = collections.Counter()
    for word in ("garden", "river", "music", "stone", "winter", "bread", "letter", "market"):
        ids = tok(render_chat(tok, [{"role": "user", "content": f"Tell me about the {word}."}]),
                  return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            seq = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:]
        counts.update(seq[2:].tolist())
    with torch.no_grad():
        w = model.get_output_embeddings().weight
        w[tok.eos_token_id] = w[counts.most_common(1)[0][0]] * 1.05
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def rand_qwen(tiny_organisms, tmp_path_factory) -> Path:
    # seed chosen so that the 20 tiny held-out prompts get 20 distinct greedy answers with both stop reasons
    return _random_model("qwen", tmp_path_factory.mktemp("rand") / "qwen", seed=7)


def _eval(model: str, model_args: dict, log_dir: Path, **kw):
    task_args = {"profile": "tiny", "max_tokens": kw.pop("max_tokens", MAX_TOKENS),
                 "temperature": kw.pop("temperature", 0.0)}
    logs = inspect_eval(spillover(**task_args), model=model, model_args=model_args, log_dir=str(log_dir),
                        display="none", **kw)
    assert len(logs) == 1 and logs[0].status == "success", logs[0].error
    return logs[0]


def _outputs(log) -> dict[str, tuple[str, object]]:
    return {str(s.id): (s.output.completion, s.output) for s in log.samples}


def _reference(folder: Path, prompts: dict[str, str], max_new_tokens: int) -> dict[str, tuple[str, int, int, str]]:
    """Plain transformers greedy generate, one prompt at a time: (text, input tokens, output tokens, reason)."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    eos = model.generation_config.eos_token_id
    out = {}
    for sid, prompt in prompts.items():
        text = render_chat(tok, [{"role": "user", "content": prompt}])
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            seq = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)[0, ids["input_ids"].shape[1]:]
        new = seq.tolist()
        n = new.index(eos) if eos in new else len(new)
        reason = "stop" if eos in new else "max_tokens"
        out[sid] = (tok.decode(new[:n], skip_special_tokens=True), ids["input_ids"].shape[1],
                    n + (1 if reason == "stop" else 0), reason)
    return out


def _prompts(log) -> dict[str, str]:
    return {str(s.id): s.input if isinstance(s.input, str) else s.input[-1].text for s in log.samples}


def _direction_file(path: Path, width: int, seed: int, R: float = 3.0, layer: int | None = 1) -> Path:
    gen = torch.Generator().manual_seed(seed)
    meta = {"model_id": "test", "mean_residual_norm": repr(R)}
    if layer is not None:
        meta["layer"] = str(layer)
    return save_direction(path, Direction(vector=torch.randn(width, generator=gen), metadata=meta))


# ------------------------------------------------------------------------------------------- (a)

def test_micro_preset_eval_matches_plain_generate(tiny_organisms, tmp_path):
    log = _eval("steer/micro-qwen", {"profile": "tiny", "variant": "none"}, tmp_path)
    df = samples_df(log.location)
    assert len(df) == len(log.samples) == 20
    ref = _reference(tiny_organisms["qwen"], _prompts(log), MAX_TOKENS)
    for sid, (text, output) in _outputs(log).items():
        r_text, r_in, r_out, r_reason = ref[sid]
        assert text == r_text
        assert output.usage.input_tokens == r_in  # unpadded
        assert output.usage.output_tokens == r_out
        assert output.stop_reason == r_reason
    # prompts of different lengths were batched together, yet each reports its own length
    assert len({o.usage.input_tokens for _, o in _outputs(log).values()}) > 1
    meta = log.samples[0].output.metadata["steer"]
    weights = str(tiny_organisms["qwen"] / "model.safetensors")
    assert meta["sha256"][weights] == sha256_file(weights) == meta["weights_sha256"]
    assert meta["intervention"] is None and meta["variant"] == "none"


def test_random_model_eval_matches_plain_generate(rand_qwen, tmp_path):
    log = _eval(f"steer/{rand_qwen}", {}, tmp_path)
    outs = _outputs(log)
    assert len({t for t, _ in outs.values()}) == len(outs)  # prompt-sensitive model
    ref = _reference(rand_qwen, _prompts(log), MAX_TOKENS)
    assert {sid: t for sid, (t, _) in outs.items()} == {sid: r[0] for sid, r in ref.items()}
    assert {sid: o.usage.output_tokens for sid, (_, o) in outs.items()} == {sid: r[2] for sid, r in ref.items()}
    assert {sid: o.stop_reason for sid, (_, o) in outs.items()} == {sid: r[3] for sid, r in ref.items()}
    assert {r[3] for r in ref.values()} == {"stop", "max_tokens"}  # both stop reasons exercised


# ------------------------------------------------------------------------------------------- (b)

def test_batched_equals_unbatched(rand_qwen, tmp_path):
    one = _eval(f"steer/{rand_qwen}", {"max_batch_size": 1}, tmp_path / "one", max_connections=1)
    many = _eval(f"steer/{rand_qwen}", {"max_batch_size": 16}, tmp_path / "many", max_connections=16)
    a, b = _outputs(one), _outputs(many)
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    assert {k: v[1].usage.output_tokens for k, v in a.items()} == {k: v[1].usage.output_tokens for k, v in b.items()}
    assert {o.metadata["steer_sample"]["batch_size"] for _, o in a.values()} == {1}
    assert max(o.metadata["steer_sample"]["batch_size"] for _, o in b.values()) == 16


def test_default_flags_batch_concurrent_samples(rand_qwen, tmp_path):
    log = _eval(f"steer/{rand_qwen}", {"seed": 5}, tmp_path)  # no max_connections: Inspect's defaults
    sizes = [s.output.metadata["steer_sample"]["batch_size"] for s in log.samples]
    assert max(sizes) == 20  # all 20 samples in one batch


# ------------------------------------------------------------------------------------------- (c)

def test_direction_subtract_changes_outputs_and_is_recorded(rand_qwen, tmp_path):
    d = _direction_file(tmp_path / "d.safetensors", 48, seed=1, R=3.0)
    base = _outputs(_eval(f"steer/{rand_qwen}", {}, tmp_path / "base"))
    zero = _outputs(_eval(f"steer/{rand_qwen}", {"direction": str(d), "alpha": 0}, tmp_path / "zero"))
    big = _eval(f"steer/{rand_qwen}", {"direction": str(d), "op": "subtract", "alpha": 8}, tmp_path / "big")
    assert {k: v[0] for k, v in zero.items()} == {k: v[0] for k, v in base.items()}
    changed = sum(big_t != base[k][0] for k, (big_t, _) in _outputs(big).items())
    assert changed >= 15
    meta = big.samples[0].output.metadata["steer"]
    iv = meta["intervention"]
    assert iv["direction_sha256"] == sha256_file(d)
    assert meta["sha256"][str(d)] == sha256_file(d)
    assert (iv["op"], iv["alpha"], iv["R"], iv["layers"], iv["positions"], iv["d_model"]) == \
        ("subtract", 8.0, 3.0, [1], "all", 48)
    assert iv["variant"] == "file" and iv["alpha_source"] == "-M alpha"


def test_resolved_model_args_recorded_and_checked(rand_qwen, tmp_path):
    from interventions.provider import resolved_model_args

    d = _direction_file(tmp_path / "d.safetensors", 48, seed=2)
    args = resolved_model_args(f"steer/{rand_qwen}", {"direction": str(d), "alpha": 2})
    log = _eval(f"steer/{rand_qwen}", args, tmp_path / "logs", limit=2)
    pinned = log.eval.model_args["resolved"]
    assert pinned["sha256"][str(d)] == sha256_file(d)
    assert pinned["sha256"][str(rand_qwen / "model.safetensors")] == sha256_file(rand_qwen / "model.safetensors")
    assert pinned["intervention"]["alpha"] == 2.0
    _direction_file(d, 48, seed=3)  # the file changes: building the model again must refuse
    with pytest.raises(EmsteerError, match="files changed"):
        resolve_plan(str(rand_qwen), args)


# ------------------------------------------------------------------------------------------- (d)

@pytest.fixture
def no_load(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("weights were loaded before validation failed")

    monkeypatch.setattr(model_loading, "_load", boom)


@pytest.mark.parametrize("args, message", [
    ({"alhpa": 1}, "unknown -M key alhpa"),
    ({"alpha": "x"}, "-M alpha must be a finite number, got 'x'"),
    ({"layer": 99, "variant": "none"}, "layer 99 is out of range for 2 decoder layers; valid: -2..1"),
    ({"variant": "bogus"}, "unknown variant 'bogus'; registered: "),
    ({"op": "multiply"}, "-M op=multiply is not valid; choose one of: subtract, add, ablate"),
    ({"load_in_4bit": True}, "load_in_4bit=true needs a CUDA device"),
    ({"variant": "own"}, "variant 'own' reads its direction from a run: pass -M run=RUN"),
])
def test_validation_errors_before_load(tiny_organisms, no_load, args, message):
    if args.get("load_in_4bit") and torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(EmsteerError) as err:
        get_model("steer/micro-qwen", memoize=False, profile="tiny", **args)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_wrong_width_direction_and_missing_organism(tiny_organisms, no_load, tmp_path):
    d = _direction_file(tmp_path / "narrow.safetensors", 40, seed=0)
    with pytest.raises(EmsteerError, match="direction width 40 does not match the model's hidden size 48"):
        get_model("steer/micro-qwen", memoize=False, profile="tiny", direction=str(d))
    with pytest.raises(EmsteerError, match="direction width 40 does not match the model's hidden size 48"):
        get_model("steer/micro-qwen", memoize=False, profile="tiny", monitor=str(d))
    with pytest.raises(EmsteerError, match=r"not built yet; run `emsteer organism build --family qwen`"):
        get_model("steer/micro-qwen", memoize=False)  # profile default: its cache is empty
    with pytest.raises(EmsteerError, match="unknown model 'no-such-model'"):
        get_model("steer/no-such-model", memoize=False)


def test_validation_error_surfaces_from_eval(tiny_organisms, no_load, tmp_path):
    with pytest.raises(EmsteerError, match="unknown -M key colour"):
        inspect_eval(spillover(profile="tiny"), model="steer/micro-qwen", model_args={"profile": "tiny", "colour": 1},
                     log_dir=str(tmp_path), display="none")


# ------------------------------------------------------------------------------------------- (e)

def test_seeded_sampling_independent_of_batch(rand_qwen, tmp_path):
    alone = _eval(f"steer/{rand_qwen}", {"max_batch_size": 1, "seed": 11}, tmp_path / "a", temperature=1.0,
                  max_connections=1)
    batch = _eval(f"steer/{rand_qwen}", {"max_batch_size": 32, "seed": 11}, tmp_path / "b", temperature=1.0)
    other = _eval(f"steer/{rand_qwen}", {"seed": 12}, tmp_path / "c", temperature=1.0)
    greedy = _outputs(_eval(f"steer/{rand_qwen}", {}, tmp_path / "g"))
    a, b, c = _outputs(alone), _outputs(batch), _outputs(other)
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    assert max(o.metadata["steer_sample"]["batch_size"] for _, o in b.values()) > 1
    assert sum(a[k][0] != c[k][0] for k in a) >= 15  # another seed draws other completions
    assert sum(a[k][0] != greedy[k][0] for k in a) >= 15  # and sampling is not greedy
    seeds = {o.metadata["steer_sample"]["seed"] for _, o in a.values()}
    assert len(seeds) == 20 and None not in seeds


# ------------------------------------------------------------------------------------------- (f)

def test_no_double_bos_with_llama_template(tiny_organisms, tmp_path):
    folder = _random_model("llama", tmp_path / "llama")
    tok = AutoTokenizer.from_pretrained(folder)
    bos = tok.bos_token_id
    # like the real Llama tokenizer: tokenizing adds BOS by itself, and the template writes one too
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, bos)])
    tok.save_pretrained(folder)
    api = get_model(f"steer/{folder}", memoize=False).api
    text = api.encode([ChatMessageUser(content="hello there")])
    assert text.startswith(tok.bos_token)
    naive = AutoTokenizer.from_pretrained(folder)(text)["input_ids"]
    assert naive[:2] == [bos, bos]  # the trap is armed
    ids = encode_batch(api.loaded.tokenizer, [text])["input_ids"][0].tolist()
    assert ids.count(bos) == 1 and ids[0] == bos and len(ids) == len(naive) - 1


# ------------------------------------------------------------------------------------------- (g)

def test_monitor_records_projections_without_changing_outputs(rand_qwen, tmp_path):
    d = _direction_file(tmp_path / "m.safetensors", 48, seed=4, layer=0)
    plain = _outputs(_eval(f"steer/{rand_qwen}", {}, tmp_path / "plain"))
    mon = _eval(f"steer/{rand_qwen}", {"monitor": str(d)}, tmp_path / "mon")
    outs = _outputs(mon)
    assert {k: v[0] for k, v in outs.items()} == {k: v[0] for k, v in plain.items()}
    meta = mon.samples[0].output.metadata
    assert meta["steer"]["monitor"]["sha256"] == sha256_file(d) and meta["steer"]["monitor"]["layer"] == 0
    # reference: one unpadded forward of prompt + completion, projections of layer 0's output
    model = AutoModelForCausalLM.from_pretrained(rand_qwen).eval()
    tok = AutoTokenizer.from_pretrained(rand_qwen)
    u = torch.randn(48, generator=torch.Generator().manual_seed(4))
    u = u / u.norm()
    prompts = _prompts(mon)
    for sample in mon.samples[:6]:
        rec = sample.output.metadata["steer_sample"]["monitor"]
        n = sample.output.usage.output_tokens
        assert rec["n"] == n
        prompt_ids = tok(render_chat(tok, [{"role": "user", "content": prompts[str(sample.id)]}]),
                         add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            seq = model.generate(torch.tensor([prompt_ids]), max_new_tokens=MAX_TOKENS, do_sample=False)[0]
            hs = model(seq[None, : len(prompt_ids) + n - 1], output_hidden_states=True).hidden_states[1][0]
        proj = (hs[len(prompt_ids) - 1:].double() @ u.double())
        assert len(proj) == n
        assert rec["mean"] == pytest.approx(float(proj.mean()), abs=1e-4)
        assert rec["max"] == pytest.approx(float(proj.max()), abs=1e-4)


# ------------------------------------------------------------------------------------------- adapters, presets

def _lora(folder: Path, base: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(4.0)
    peft_model.save_pretrained(folder)
    return folder


def test_adapter_shares_the_base_and_changes_outputs(rand_qwen, tmp_path):
    lora = _lora(tmp_path / "lora", rand_qwen, seed=0)
    base_before = _outputs(_eval(f"steer/{rand_qwen}", {"seed": 1}, tmp_path / "b1"))
    tuned = _eval(f"steer/{rand_qwen}", {"adapter": str(lora)}, tmp_path / "t")
    base_after = _outputs(_eval(f"steer/{rand_qwen}", {"seed": 2}, tmp_path / "b2"))
    assert {k: v[0] for k, v in base_after.items()} == {k: v[0] for k, v in base_before.items()}
    assert sum(t != base_before[k][0] for k, (t, _) in _outputs(tuned).items()) >= 15
    loads = [m for m in model_loading.loaded_models() if m.key.model == str(rand_qwen)]
    assert len(loads) == 1  # one weight load for base and adapter variants
    meta = tuned.samples[0].output.metadata["steer"]
    weights = str(lora / "adapter_model.safetensors")
    assert meta["adapter"]["sha256"][weights] == sha256_file(weights) == meta["sha256"][weights]


def _fake_run(run: Path, tiny_qwen: Path, alpha: float | None) -> Path:
    _lora(adapter_dir(run, "qwen", "insecure", 0), tiny_qwen, seed=1)
    _direction_file(own_direction_path(run, "qwen", 1), 48, seed=5, R=2.5, layer=1)
    if alpha is not None:
        calibration_path(run, "qwen").parent.mkdir(parents=True, exist_ok=True)
        calibration_path(run, "qwen").write_text(json.dumps({"alpha": alpha}))
    return run


def test_steered_preset(tiny_organisms, tmp_path):
    run = _fake_run(tmp_path / "run", tiny_organisms["qwen"], alpha=1.5)
    plan = resolve_plan("micro-qwen-steered", {"profile": "tiny", "run": str(run)})
    assert plan.adapter_dir == adapter_dir(run, "qwen", "insecure", 0).resolve()
    iv = plan.intervention_record()
    assert (iv["op"], iv["alpha"], iv["R"], iv["layers"], iv["variant"]) == ("subtract", 1.5, 2.5, [1], "own")
    assert iv["alpha_source"] == str(calibration_path(run.resolve(), "qwen"))
    overridden = resolve_plan("micro-qwen-steered", {"profile": "tiny", "run": str(run), "alpha": 4})
    assert overridden.intervention.alpha == 4.0
    log = _eval("steer/micro-qwen-steered", {"profile": "tiny", "run": str(run)}, tmp_path / "logs", limit=3)
    assert log.samples[0].output.metadata["steer"]["intervention"]["alpha"] == 1.5


def test_a_run_alone_selects_its_profile(tiny_organisms, tmp_path):
    """`-M run=RUN` is enough: a micro preset takes the profile RUN/run.json records, and the spillover task (which
    Inspect builds after the model) takes that profile's held-out prompts; an explicit other profile is one line."""
    from interventions.paths import heldout_prompts_path
    from training.run_manifest import ensure_run

    run = _fake_run(tmp_path / "run", tiny_organisms["qwen"], alpha=1.5)
    ensure_run(run, "tiny")
    plan = resolve_plan("micro-qwen-steered", {"run": str(run)})
    assert (plan.profile, plan.run_profile) == ("tiny", "tiny")
    assert plan.load_key.model == str(tiny_organisms["qwen"].resolve())
    logs = inspect_eval("evals/spillover.py", model="steer/micro-qwen-steered", model_args={"run": str(run)},
                        task_args={"max_tokens": 4}, limit=2, log_dir=str(tmp_path / "logs"), display="none")
    assert logs[0].status == "success", logs[0].error
    assert logs[0].eval.metadata["profile"] == "tiny"
    assert logs[0].eval.metadata["prompts"] == str(heldout_prompts_path("tiny"))
    # the intervention is in the log header as plain values, and the log list tells it apart by name and tags
    head = logs[0].eval.metadata["steer"]
    assert (head["variant"], head["op"], head["alpha"], head["R"], head["layer"]) == ("own", "subtract", 1.5, 2.5, 1)
    assert head["alpha_source"] == str(calibration_path(run.resolve(), "qwen"))
    assert head["direction_sha256"] == sha256_file(own_direction_path(run, "qwen", 1))
    assert head["adapter"] == str(adapter_dir(run, "qwen", "insecure", 0).resolve())
    assert head["weights_sha256"] == plan.weights_sha256 and head["profile"] == "tiny"
    assert {"variant:own", "subtract:1.5", "layer:1", "adapter:insecure"} <= set(logs[0].eval.tags)
    assert logs[0].eval.task_display_name == "spillover: micro-qwen-steered + insecure adapter, own subtract alpha 1.5 at layer 1"
    with pytest.raises(EmsteerError, match="belongs to profile 'tiny', but the model is the 'default' organism"):
        resolve_plan("micro-qwen-steered", {"run": str(run), "profile": "default"})


def test_steered_preset_errors(tiny_organisms, no_load, tmp_path):
    with pytest.raises(EmsteerError, match="needs -M run=RUN"):
        resolve_plan("micro-qwen-steered", {"profile": "tiny"})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EmsteerError, match=r"adapters/qwen/insecure/seed_0 \(missing\); make it with `emsteer finetune"):
        resolve_plan("micro-qwen-steered", {"profile": "tiny", "run": str(empty)})
    run = _fake_run(tmp_path / "run", tiny_organisms["qwen"], alpha=None)
    with pytest.raises(EmsteerError, match=r"calibration/qwen.json \(missing\); make it with `emsteer .*or pass -M alpha"):
        resolve_plan("micro-qwen-steered", {"profile": "tiny", "run": str(run)})


# ------------------------------------------------------------------------------------------- architectures

@pytest.mark.parametrize("family", FAMILIES)
def test_micro_presets_steer(tiny_organisms, tmp_path, family):
    width = AutoConfig.from_pretrained(tiny_organisms[family]).hidden_size
    d = _direction_file(tmp_path / "d.safetensors", width, seed=6, R=2.0)
    log = _eval(f"steer/micro-{family}", {"profile": "tiny", "direction": str(d), "alpha": 2, "positions": "generated"},
                tmp_path / "logs", limit=3)
    for s in log.samples:
        meta = s.output.metadata["steer"]
        assert (meta["family"], meta["d_model"], meta["intervention"]["positions"]) == (family, width, "generated")
        assert s.output.usage.input_tokens > 0 and 1 <= s.output.usage.output_tokens <= MAX_TOKENS


def test_image_text_to_text_checkpoint(tiny_organisms, tmp_path):
    """A Mistral3ForConditionalGeneration folder (real Ministral-3 layout): text layers and width from the text
    config, loaded with AutoModelForImageTextToText, steered on the text decoder."""
    from transformers import GenerationConfig, Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, \
        PixtralVisionConfig

    tok = AutoTokenizer.from_pretrained(organism_dir("ministral", "tiny"))
    text = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                         initializer_range=0.2)
    vision = PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 head_dim=8, image_size=28, patch_size=14)
    torch.manual_seed(0)
    model = Mistral3ForConditionalGeneration(Mistral3Config(vision_config=vision, text_config=text, image_token_index=5))
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    folder = tmp_path / "m3"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    plan = resolve_plan(str(folder), {})
    assert (plan.load_key.auto_class, plan.config.n_layers, plan.config.d_model, plan.layer, plan.family) == \
        ("AutoModelForImageTextToText", 3, 32, 2, "ministral")
    with pytest.raises(EmsteerError, match="layer 3 is out of range for 3 decoder layers"):
        resolve_plan(str(folder), {"layer": 3})
    d = _direction_file(tmp_path / "d.safetensors", 32, seed=7, R=1.0)
    base = _outputs(_eval(f"steer/{folder}", {}, tmp_path / "base", limit=8))
    steered = _outputs(_eval(f"steer/{folder}", {"direction": str(d), "alpha": 30}, tmp_path / "steered", limit=8))
    assert sum(steered[k][0] != base[k][0] for k in base) >= 6


def test_stop_sequences_and_direct_generate(rand_qwen):
    import asyncio

    from inspect_ai.model import GenerateConfig

    api = get_model(f"steer/{rand_qwen}", memoize=False).api
    msgs = [[ChatMessageUser(content=f"Tell me about the {w}.")] for w in ("lake", "forest", "city", "moon")]

    async def run(config):
        return await asyncio.gather(*[api.generate(m, [], "none", config) for m in msgs])

    free = [o for o, _ in asyncio.run(run(GenerateConfig(max_tokens=MAX_TOKENS)))]
    long = next(o for o in free if len(o.completion) >= 12)
    stop = long.completion[6:9]
    cut = asyncio.run(run(GenerateConfig(max_tokens=MAX_TOKENS, stop_seqs=[stop])))
    mine = cut[free.index(long)][0]
    assert mine.completion == long.completion[: long.completion.index(stop)]
    assert mine.stop_reason == "stop"
    assert mine.usage.output_tokens < long.usage.output_tokens
    call = cut[0][1]
    assert call.request["prompt"] == api.encode(msgs[0]) and call.request["stop_seqs"] == [stop]
