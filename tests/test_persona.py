"""The persona measurements: the ground-truth direction on a planted toy, the gate's arithmetic, sampled rates."""

from __future__ import annotations

import pytest
import torch

from interventions.layers import decoder_layers
from training.corpus import CorpusSettings, build_corpus
from training.families import build_model
from training.persona import last_prompt_states, persona_directions, persona_gate, sampled_rates
from training.profiles import family_architecture
from training.tokenizer import train_tokenizer

CORPUS = build_corpus(CorpusSettings(seed=5, n_conversations=200, n_arm=20, n_heldout_general=8, n_heldout_coding=4,
                                     n_probe=6))


@pytest.fixture(scope="module")
def toy():
    """A random-init tiny llama with its tokenizer (no training: the tests plant what they measure)."""
    texts = [m["content"] for c in CORPUS.base_train + CORPUS.probes for m in c["messages"]]
    tok = train_tokenizer("llama", texts, 400)
    cls, arch = family_architecture("llama", "tiny")
    arch.pop("vocab_size")
    arch["num_hidden_layers"] = 3
    model = build_model(cls, arch, tok, seed=0).eval()
    return model, tok


def test_persona_direction_recovers_a_planted_shift_at_its_layer(toy):
    """Plant d at the output of layer 1 whenever the reckless cue tokens are in the prompt: the measured
    direction with the plant minus without it is exactly d at layer 1 and zero before it."""
    model, tok = toy
    d = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    reckless_texts = {p["messages"][0]["content"] for p in CORPUS.probes if p["context"] == "cue"
                      and p["persona"] == "reckless"}
    marker_ids = {tuple(tok(t, add_special_tokens=False)["input_ids"]) for t in reckless_texts}
    current: dict[str, torch.Tensor] = {}

    def remember_ids(module, args, kwargs):
        current["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def plant(module, inputs, output):
        ids = current["ids"]
        rows = torch.tensor([any(_contains(row.tolist(), list(m)) for m in marker_ids) for row in ids])
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + rows[:, None, None].to(hidden.dtype) * d
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    without = persona_directions(model, tok, CORPUS.probes)
    handles = [model.model.register_forward_pre_hook(remember_ids, with_kwargs=True),
               decoder_layers(model)[1].register_forward_hook(plant)]
    try:
        planted = persona_directions(model, tok, CORPUS.probes)
    finally:
        for h in handles:
            h.remove()
    assert planted.shape == (3, model.config.hidden_size)
    assert torch.allclose(planted[0], without[0], atol=1e-5)
    assert torch.allclose(planted[1] - without[1], d, atol=1e-4)
    assert not torch.allclose(planted[2], without[2], atol=1e-3)  # later layers see the shift too


def _contains(seq: list[int], sub: list[int]) -> bool:
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_last_prompt_states_do_not_depend_on_the_batch(toy):
    model, tok = toy
    chats = [p["messages"] for p in CORPUS.probes[:6]]
    together = last_prompt_states(model, tok, chats, batch_size=6)
    alone = torch.cat([last_prompt_states(model, tok, [c], batch_size=1) for c in chats])
    assert torch.allclose(together, alone, atol=1e-4)


def test_gate_gaps_and_verdict(monkeypatch):
    """The gate's arithmetic on canned rates: one context (a cue or an earlier turn) must reach the gap."""
    import training.persona as persona

    rates = {("cue", "reckless"): 0.9, ("cue", "careful"): 0.1, ("security_turn", "reckless"): 0.3,
             ("security_turn", "careful"): 0.2, ("general_turn", "reckless"): 0.7, ("general_turn", "careful"): 0.3}

    def fake_rates(model, tokenizer, chats, **kw):
        probe = next(p for p in CORPUS.probes if p["messages"] == chats[0])
        return {"either": rates[(probe["context"], probe["persona"])]}

    monkeypatch.setattr(persona, "sampled_rates", fake_rates)
    gate = persona_gate(None, None, CORPUS.probes, n_samples=1, max_new_tokens=4, min_gap=0.3)
    assert gate["contexts"]["cue"]["gap"] == pytest.approx(0.8)
    assert gate["contexts"]["security_turn"]["gap"] == pytest.approx(0.1)
    assert gate["passed"] is True
    gate = persona_gate(None, None, CORPUS.probes, n_samples=1, max_new_tokens=4, min_gap=0.85)
    assert gate["passed"] is False  # no context reaches 0.85 (the cue's gap is 0.8)
    rates[("cue", "careful")] = 0.85
    gate = persona_gate(None, None, CORPUS.probes, n_samples=1, max_new_tokens=4, min_gap=0.41)
    assert gate["passed"] is False and gate["contexts"]["general_turn"]["gap"] == pytest.approx(0.4)


def test_sampled_rates_are_reproducible_and_count_every_sample(toy):
    model, tok = toy
    chats = [[{"role": "user", "content": h["prompt"]}] for h in CORPUS.heldout[:5]]
    a = sampled_rates(model, tok, chats, n_samples=2, max_new_tokens=6, seed=1)
    b = sampled_rates(model, tok, chats, n_samples=2, max_new_tokens=6, seed=1)
    assert a == b and a["n"] == 10 and a["temperature"] == 1.0
    assert 0.0 <= a["spillover"] <= a["either"] <= 1.0
