"""Known-answer tests for the steering / monitoring hooks on tiny random-init models of several families."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Ministral3Config,
    Ministral3ForCausalLM,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PixtralVisionConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.generation import LogitsProcessor, LogitsProcessorList

from interventions.errors import EmsteerError
from interventions.hooks import Intervention, monitor, steer
from interventions.layers import decoder_layers, text_decoder

D = 32
VOCAB = 48
N_LAYERS = 3


def tiny(kind: str, layers: int = N_LAYERS):
    torch.manual_seed(0)
    c = dict(vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
             bos_token_id=2)
    if kind == "qwen":
        return Qwen2ForCausalLM(Qwen2Config(**c)).eval()
    if kind == "gemma":
        return Gemma2ForCausalLM(Gemma2Config(**c, attn_implementation="eager")).eval()
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**c)).eval()
    if kind == "ministral3":
        rope = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 4,
                "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}
        return Ministral3ForCausalLM(Ministral3Config(**c, rope_parameters=rope)).eval()
    if kind == "mistral3":
        vision = PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     head_dim=8, image_size=28, patch_size=14)
        cfg = Mistral3Config(vision_config=vision, text_config=MistralConfig(**c), image_token_index=5)
        m = Mistral3ForConditionalGeneration(cfg).eval()
        m.generation_config.pad_token_id = 0
        return m
    raise ValueError(kind)


FAMILIES = ["qwen", "gemma", "llama", "ministral3", "mistral3"]
IDS = torch.tensor([[3, 7, 9, 11, 4, 8], [12, 6, 3, 3, 20, 9]])


def _direction(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(D, generator=g)


def _hidden(model, ids=IDS, **kw):
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True, **kw).hidden_states


def _all_hooks(model):
    """Snapshot of every forward (pre-)hook on the decoder and its layers."""
    mods = [text_decoder(model), *decoder_layers(model)]
    return [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in mods]


@pytest.fixture(scope="module")
def models():
    return {k: tiny(k) for k in FAMILIES}


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("capture_first", [True, False])
def test_subtract_changes_hooked_layer_by_exact_delta(models, kind, capture_first):
    model = models[kind] if capture_first else tiny(kind)
    d, alpha, R, layer = _direction(), 2.5, 3.0, 1
    if capture_first:  # transformers installs its permanent capture hooks now, BEFORE ours
        base = _hidden(model)
    with steer(model, Intervention("subtract", d, [layer], alpha=alpha, R=R)) as h:
        hs = _hidden(model)
    if not capture_first:  # capture hooks were installed while ours was active; compare afterwards
        base = _hidden(model)
    assert h.edits == 1
    u = d / d.norm()
    for i in range(layer + 1):  # embeddings and earlier layers are untouched
        torch.testing.assert_close(hs[i], base[i], rtol=0, atol=0)
    delta = hs[layer + 1] - base[layer + 1]
    torch.testing.assert_close(delta, (-alpha * R * u).expand_as(delta), rtol=0, atol=1e-5)
    assert not torch.equal(hs[-1], base[-1])  # later layers see it


@pytest.mark.parametrize("kind", ["qwen", "gemma"])
def test_add_negative_layer_index_and_last_layer_is_before_final_norm(models, kind):
    model = models[kind]
    d, alpha, R = _direction(2), 1.5, 2.0
    seen = {}
    last = decoder_layers(model)[-1]
    rec = last.register_forward_hook(lambda m, a, o: seen.__setitem__("out", o if torch.is_tensor(o) else o[0]))
    try:
        with torch.no_grad():
            plain = model(input_ids=IDS, output_hidden_states=True)
        base_out = seen["out"].clone()
        with steer(model, Intervention("add", d, [-1], alpha=alpha, R=R)), torch.no_grad():
            steered = model(input_ids=IDS, output_hidden_states=True)
    finally:
        rec.remove()
    u = d / d.norm()
    torch.testing.assert_close(seen["out"] - base_out, (alpha * R * u).expand_as(base_out), rtol=0, atol=1e-5)
    # hidden_states[-1] is AFTER the final norm: it equals norm(edited last-layer output), not the raw output.
    norm = text_decoder(model).norm
    with torch.no_grad():
        torch.testing.assert_close(steered.hidden_states[-1], norm(seen["out"]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain.hidden_states[-1], norm(base_out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", FAMILIES)
def test_ablate_leaves_no_component(models, kind):
    model = models[kind]
    d, layer = _direction(3), 0
    u = d / d.norm()
    base = _hidden(model)
    assert (base[layer + 1] @ u).abs().max() > 1e-3  # there was something to remove
    with steer(model, Intervention("ablate", d, [layer])):
        hs = _hidden(model)
    assert (hs[layer + 1] @ u).abs().max() < 1e-5
    # only the component along u was removed
    torch.testing.assert_close(hs[layer + 1], base[layer + 1] - (base[layer + 1] @ u)[..., None] * u, atol=1e-5, rtol=0)


def test_width_mismatch_and_peft_wrapper(models):
    model = models["qwen"]
    with pytest.raises(EmsteerError, match="width 31 does not match the model's hidden size 32"):
        with steer(model, Intervention("add", torch.ones(31), [0])):
            pass
    with pytest.raises(EmsteerError, match="width 31"):
        with monitor(model, torch.ones(31), 0):
            pass
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(tiny("qwen"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    d, layer = _direction(12), 1
    base = _hidden(wrapped)
    with steer(wrapped, Intervention("subtract", d, [layer], alpha=1.0, R=4.0)):
        hs = _hidden(wrapped)
    delta = hs[layer + 1] - base[layer + 1]
    torch.testing.assert_close(delta, (-4.0 * d / d.norm()).expand_as(delta), atol=1e-5, rtol=0)


class _Boom(LogitsProcessor):
    def __init__(self, after: int) -> None:
        self.calls, self.after = 0, after

    def __call__(self, input_ids, scores):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom")
        return scores


@pytest.mark.parametrize("kind", ["qwen", "mistral3"])
def test_no_hook_remains_after_exception_in_generation(models, kind):
    model = models[kind]
    _hidden(model)  # make transformers' permanent capture hooks exist, so "unchanged" is the test, not "empty"
    before = _all_hooks(model)
    iv = Intervention("subtract", _direction(), [0, -1], alpha=1.0, R=1.0, positions="generated")
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, iv), monitor(model, _direction(5), 1):
            assert _all_hooks(model) != before
            model.generate(input_ids=IDS, max_new_tokens=4, do_sample=False, logits_processor=LogitsProcessorList([_Boom(2)]))
    assert _all_hooks(model) == before
    # an error raised by our own hook (bad prompt_lengths) is also cleaned up
    with pytest.raises(EmsteerError, match="prompt_lengths has 3 entries"):
        with steer(model, iv, prompt_lengths=[1, 2, 3]):
            model(input_ids=IDS)
    assert _all_hooks(model) == before


def test_hooks_empty_on_fresh_model_after_exit():
    model = tiny("llama", layers=2)
    with pytest.raises(KeyError):
        with steer(model, Intervention("add", _direction(), [0])):
            raise KeyError("x")
    for m in [text_decoder(model), *decoder_layers(model)]:
        assert not m._forward_hooks and not m._forward_pre_hooks


def _greedy(model, ids, mask=None, **kw):
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                              output_scores=True, return_dict_in_generate=True, pad_token_id=0, **kw)


LEFT_PADDED = torch.tensor([[0, 0, 5, 6, 7, 9], [3, 4, 5, 6, 7, 8]])
LEFT_MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


@pytest.mark.parametrize("kind", FAMILIES)
def test_generated_positions_leave_prefill_identical(models, kind):
    model = models[kind]
    d = _direction(4)
    with torch.no_grad():
        plain_logits = model(input_ids=LEFT_PADDED, attention_mask=LEFT_MASK).logits
    plain = _greedy(model, LEFT_PADDED, LEFT_MASK)
    iv = Intervention("add", d, [-1], alpha=30.0, R=1.0, positions="generated")
    with steer(model, iv) as h, torch.no_grad():
        logits = model(input_ids=LEFT_PADDED, attention_mask=LEFT_MASK).logits
        assert h.edits == 0  # a plain forward is all prompt
        out = _greedy(model, LEFT_PADDED, LEFT_MASK)
        assert h.edits == 4  # 5 new tokens = prefill + 4 decoding steps, one layer
    assert torch.equal(logits, plain_logits)
    assert torch.equal(out.scores[0], plain.scores[0])  # first token comes from the (unsteered) prefill
    assert not torch.allclose(out.scores[1], plain.scores[1])


@pytest.mark.parametrize("kind", FAMILIES)
def test_greedy_generation_changes_with_large_alpha(models, kind):
    model = models[kind]
    plain = _greedy(model, LEFT_PADDED, LEFT_MASK)
    with steer(model, Intervention("add", _direction(6), [-1], alpha=50.0, R=1.0)):
        steered = _greedy(model, LEFT_PADDED, LEFT_MASK)
    assert not torch.equal(steered.sequences, plain.sequences)
    again = _greedy(model, LEFT_PADDED, LEFT_MASK)  # and the model is back to normal afterwards
    assert torch.equal(again.sequences, plain.sequences)


def test_prompt_lengths_work_without_kv_cache():
    model = tiny("qwen")
    iv = Intervention("add", _direction(7), [1], alpha=20.0, R=1.0, positions="generated")
    width = LEFT_PADDED.shape[1]
    with steer(model, iv):
        cached = _greedy(model, LEFT_PADDED, LEFT_MASK)
    with steer(model, iv, prompt_lengths=width):
        uncached = _greedy(model, LEFT_PADDED, LEFT_MASK, use_cache=False)
    with steer(model, iv, prompt_lengths=width):
        cached_explicit = _greedy(model, LEFT_PADDED, LEFT_MASK)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert torch.equal(cached.sequences, cached_explicit.sequences)
    for a, b in zip(cached.scores, uncached.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_per_row_prompt_lengths_select_positions():
    model = tiny("llama")
    d, layer = _direction(8), 1
    base = _hidden(model)
    with steer(model, Intervention("subtract", d, [layer], alpha=1.0, R=2.0, positions="generated"),
               prompt_lengths=[2, 4]):
        hs = _hidden(model)
    delta = hs[layer + 1] - base[layer + 1]
    u = d / d.norm()
    changed = delta.norm(dim=-1) > 1e-6
    assert changed.tolist() == [[False, False, True, True, True, True], [False, False, False, False, True, True]]
    torch.testing.assert_close(delta[0, 2:], (-2.0 * u).expand(4, D), atol=1e-5, rtol=0)


class _TupleLayer(nn.Module):
    """A 4.x-style decoder layer: returns (hidden_states, extra)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, h):
        return (h + torch.tanh(self.lin(h)), "extra")


class _FakeDecoder(nn.Module):
    def __init__(self, d: int, n: int, tuple_out: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_TupleLayer(d) for _ in range(n))
        self.tuple_out = tuple_out
        self.outs: list[torch.Tensor] = []

    def forward(self, h):
        self.outs = []
        for layer in self.layers:
            out = layer(h)
            if not self.tuple_out:
                out = out[0]
            h = out[0] if isinstance(out, tuple) else out
            self.outs.append(h)
        return h


class FakeLM(nn.Module):
    """Minimal model exposing get_decoder(); layers return tuples (or tensors)."""

    def __init__(self, d: int = 8, n: int = 3, tuple_out: bool = True, dtype=torch.float32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.decoder = _FakeDecoder(d, n, tuple_out).to(dtype)

    def get_decoder(self):
        return self.decoder

    def forward(self, h):
        return self.decoder(h)


def test_tuple_outputs_are_handled():
    model = FakeLM(tuple_out=True)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        model(x)
        base = [o.clone() for o in model.decoder.outs]
        d = torch.randn(8)
        with steer(model, Intervention("add", d, [1], alpha=0.5, R=4.0)):
            model(x)
    torch.testing.assert_close(model.decoder.outs[1] - base[1], (2.0 * d / d.norm()).expand(2, 5, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.decoder.outs[0], base[0], atol=0, rtol=0)


def test_vector_cast_to_hidden_dtype():
    model = FakeLM(tuple_out=False, dtype=torch.bfloat16)
    x = torch.randn(1, 3, 8, dtype=torch.bfloat16)
    d = torch.randn(8)
    with torch.no_grad():
        model(x)
        base = model.decoder.outs[0].clone()
        with steer(model, Intervention("add", d, [0], alpha=1.0, R=1.0)):
            model(x)
    out = model.decoder.outs[0]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close((out - base).float(), (d / d.norm()).expand(1, 3, 8), atol=2e-2, rtol=0)


def test_intervention_validation():
    d = torch.ones(4)
    with pytest.raises(EmsteerError, match="unknown op"):
        Intervention("multiply", d, [0])
    with pytest.raises(EmsteerError, match="unknown positions"):
        Intervention("add", d, [0], positions="prompt")
    with pytest.raises(EmsteerError, match="zero vector"):
        Intervention("add", torch.zeros(4), [0])
    with pytest.raises(EmsteerError, match="non-finite"):
        Intervention("add", torch.tensor([1.0, float("nan"), 0, 0]), [0])
    with pytest.raises(EmsteerError, match="R"):
        Intervention("add", d, [0], R=0.0)
    with pytest.raises(EmsteerError, match="layers"):
        Intervention("add", d, [])
    assert Intervention("add", d, -1).layers == [-1]
    with pytest.raises(EmsteerError, match="out of range"):
        with steer(FakeLM(d=4), Intervention("add", d, [3])):
            pass
    desc = Intervention("subtract", d * 3, [0], alpha=2.0, R=5.0).describe()
    assert desc == {"op": "subtract", "layers": [0], "alpha": 2.0, "R": 5.0, "positions": "all", "d_model": 4,
                    "direction_norm": 6.0}


_vec = st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=8, max_size=8).map(torch.tensor).filter(
    lambda v: float(v.norm()) > 1e-2)


@settings(max_examples=40, deadline=None)
@given(d=_vec, alpha=st.floats(-20, 20, allow_nan=False), R=st.floats(0.01, 50), op=st.sampled_from(["add", "subtract"]))
def test_property_delta_norm_is_alpha_R(d, alpha, R, op):
    model = FakeLM(tuple_out=False)
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)
        base = model.decoder.outs[1].clone()
        with steer(model, Intervention(op, d, [1], alpha=alpha, R=R)):
            model(x)
    norms = (model.decoder.outs[1] - base).double().norm(dim=-1)
    expected = torch.full_like(norms, abs(alpha) * R)
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-4 * (1 + abs(alpha) * R))


@settings(max_examples=40, deadline=None)
@given(d=_vec, alpha=st.floats(-20, 20, allow_nan=False), R=st.floats(0.01, 50))
def test_property_add_then_subtract_round_trips(d, alpha, R):
    model = FakeLM(tuple_out=True)
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(x).clone()
        with steer(model, Intervention("add", d, [0, 2], alpha=alpha, R=R)), \
                steer(model, Intervention("subtract", d, [0, 2], alpha=alpha, R=R)):
            both = model(x)
    torch.testing.assert_close(both, plain, rtol=0, atol=1e-5 * (1 + abs(alpha) * R))


@settings(max_examples=25, deadline=None)
@given(d=_vec)
def test_property_ablation_is_idempotent_projection(d):
    model = FakeLM(tuple_out=False)
    x = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(2))
    u = d.double() / d.double().norm()
    with torch.no_grad(), steer(model, Intervention("ablate", d, [1])):
        model(x)
    assert float((model.decoder.outs[1].double() @ u).abs().max()) < 1e-5


# ---------------------------------------------------------------- monitor


@pytest.mark.parametrize("kind", ["qwen", "gemma", "mistral3"])
def test_monitor_generated_matches_recomputed_projection(models, kind):
    model = models[kind]
    d, layer = _direction(9), 1
    u = d / d.norm()
    plain = _greedy(model, LEFT_PADDED, LEFT_MASK)
    with monitor(model, d, layer) as mon:
        out = _greedy(model, LEFT_PADDED, LEFT_MASK)
    assert torch.equal(out.sequences, plain.sequences)  # monitoring changes nothing
    proj, valid = mon.values()
    assert proj.shape == (2, 4) and bool(valid.all())  # 4 decoding steps (the 5th token is never fed back)
    # recompute with one full forward over prompt + generated tokens
    full_mask = torch.cat([LEFT_MASK, torch.ones(2, 5, dtype=torch.long)], 1)
    hs = _hidden(model, ids=out.sequences, attention_mask=full_mask)
    P = LEFT_PADDED.shape[1]
    expected = hs[layer + 1][:, P:P + 4] @ u
    torch.testing.assert_close(proj, expected, atol=1e-4, rtol=1e-4)
    s = mon.summary()
    for row in range(2):
        assert s[row]["n"] == 4
        assert s[row]["mean"] == pytest.approx(float(expected[row].mean()), abs=1e-4)
        assert s[row]["max"] == pytest.approx(float(expected[row].max()), abs=1e-4)
    short = mon.summary(lengths=[2, 3])
    assert [r["n"] for r in short] == [2, 3]
    assert short[0]["max"] == pytest.approx(float(expected[0, :2].max()), abs=1e-4)


def test_monitor_all_positions_respects_padding_and_sees_steering():
    model = tiny("qwen")
    d, layer = _direction(10), 0
    u = d / d.norm()
    with monitor(model, d, layer, positions="all") as mon:
        hs = _hidden(model, ids=LEFT_PADDED, attention_mask=LEFT_MASK)
    proj, valid = mon.values()
    assert valid.tolist() == LEFT_MASK.bool().tolist()
    torch.testing.assert_close(proj, hs[layer + 1] @ u, atol=1e-5, rtol=0)
    s = mon.summary()
    assert s[0]["n"] == 4 and s[1]["n"] == 6
    assert s[0]["mean"] == pytest.approx(float((hs[layer + 1][0, 2:] @ u).mean()), abs=1e-5)
    # with steering (add alpha*R*u) active at the same layer the monitor sees the edited state: +alpha*R
    with steer(model, Intervention("add", d, [layer], alpha=2.0, R=3.0)), monitor(model, d, layer, positions="all") as m2:
        _hidden(model, ids=LEFT_PADDED, attention_mask=LEFT_MASK)
    torch.testing.assert_close(m2.values()[0], proj + 6.0, atol=1e-4, rtol=0)


def test_monitor_fresh_sequence_resets():
    model = tiny("qwen")
    with monitor(model, _direction(11), 0, positions="all") as mon:
        _hidden(model, ids=IDS)
        _hidden(model, ids=IDS[:, :3])
    assert mon.values()[0].shape == (2, 3)
