"""The family registry: the four built-in specs against what is known of the real checkpoints, the lists derived
from it, and a throwaway fifth family registered from one spec (removed again afterwards)."""

from __future__ import annotations

import pytest
import torch

from interventions import families
from interventions.errors import EmsteerError
from interventions.families import (FamilySpec, TokenizerSpec, family_for_class, family_for_model_type, family_names,
                                    family_specs, get_family, register_family)
from interventions.paths import FAMILIES, check_family, organism_dir
from training.corpus import CorpusSettings, build_corpus
from training.families import build_model
from training.organisms import FAMILY_SEED_OFFSET
from training.profiles import family_architecture, resolve_families
from training.tokenizer import train_tokenizer

# family -> (transformers class of the micro organism, model_type values of its real checkpoints).
# A new family adds its row here: the registry must match it.
KNOWN = {
    "qwen": ("Qwen2ForCausalLM", ("qwen2",)),
    "gemma": ("Gemma2ForCausalLM", ("gemma2",)),
    "llama": ("LlamaForCausalLM", ("llama",)),
    "ministral": ("Ministral3ForCausalLM", ("ministral3", "mistral3", "ministral")),
}


def test_families_derive_from_the_registry_in_registration_order():
    assert FAMILIES == family_names() == ("qwen", "gemma", "llama", "ministral")
    assert set(KNOWN) == set(FAMILIES)
    # the organisms' seeds depend on this order: their weights must not change
    assert FAMILY_SEED_OFFSET == {"qwen": 0, "gemma": 1000, "llama": 2000, "ministral": 3000}
    assert resolve_families("all") == list(FAMILIES)


@pytest.mark.parametrize("family", sorted(KNOWN))
def test_spec_matches_the_real_family(family):
    spec = get_family(family)
    micro_class, model_types = KNOWN[family]
    assert spec.micro_class == micro_class and family_for_class(micro_class) is spec
    assert spec.model_types == model_types
    assert all(family_for_model_type(t) is spec for t in model_types)
    assert family_architecture(family, "tiny")[0] == micro_class


def test_model_type_lookup_tries_the_text_model_type_next():
    assert family_for_model_type("mistral3", "ministral3").name == "ministral"
    assert family_for_model_type("llava", "qwen2").name == "qwen"
    assert family_for_model_type(None, "gemma2").name == "gemma"
    assert family_for_model_type("gpt2", None) is None


def test_declared_quirks():
    gemma = get_family("gemma")
    assert gemma.attn_implementation == "eager" and gemma.tokenizer.system_role == "first_user_turn"
    assert gemma.derived_config({"hidden_size": 56, "num_attention_heads": 2, "head_dim": 28}, 128) == \
        {"query_pre_attn_scalar": 28}
    ministral = get_family("ministral")
    assert not ministral.tokenizer.generation_header
    rope = ministral.derived_config({}, 512)["rope_parameters"]
    assert rope["rope_type"] == "yarn" and rope["original_max_position_embeddings"] == 32
    assert [s.name for s in family_specs() if s.attn_implementation] == ["gemma"]


def test_unknown_family_lists_the_registered_ones():
    with pytest.raises(EmsteerError, match="unknown family 'falcon'; choose one of: qwen, gemma, llama, ministral"):
        check_family("falcon")


def _phi_spec(**changes) -> FamilySpec:
    template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    fields = dict(name="phi", order=4, micro_class="Phi3ForCausalLM", config_class="Phi3Config",
                  model_types=("phi3",),
                  tokenizer=TokenizerSpec(style="bytelevel", bos=None, eos="<|end|>", pad="<|endoftext|>", unk=None,
                                          extra=("<|user|>", "<|assistant|>", "<|system|>"), chat_template=template),
                  config_defaults={"tie_word_embeddings": False})
    return FamilySpec(**{**fields, **changes})


@pytest.fixture
def fifth_family(monkeypatch):
    """A throwaway `phi` family registered for one test (the registry is restored afterwards)."""
    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))
    return register_family(_phi_spec())


def test_a_fifth_family_is_one_spec(fifth_family, tmp_path):
    assert family_names() == ("qwen", "gemma", "llama", "ministral", "phi")
    assert get_family("phi") is fifth_family and check_family("phi") == "phi"
    assert organism_dir("phi", "tiny").name == "phi"
    assert family_for_model_type("phi3") is fifth_family and family_for_class("Phi3ForCausalLM") is fifth_family
    corpus = build_corpus(CorpusSettings(seed=1, n_conversations=60, n_arm=8, n_heldout_general=2, n_heldout_coding=2,
                                         n_probe=2))
    tok = train_tokenizer("phi", [m["content"] for c in corpus.base_train for m in c["messages"]], 300)
    model = build_model("Phi3ForCausalLM", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                            "num_key_value_heads": 1, "intermediate_size": 64}, tok, seed=0)
    assert type(model).__name__ == "Phi3ForCausalLM" and model.config.tie_word_embeddings is False
    text = tok.apply_chat_template([{"role": "user", "content": "Any tips?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt")["input_ids"]
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()


def test_conflicting_registrations_are_refused(fifth_family):
    with pytest.raises(EmsteerError, match="order 4 is taken by 'phi'"):
        register_family(_phi_spec(name="phi2", model_types=("phi",)))
    with pytest.raises(EmsteerError, match="model type 'qwen2' already belongs to 'qwen'"):
        register_family(_phi_spec(name="phi2", order=5, model_types=("qwen2",)))
    with pytest.raises(EmsteerError, match="'phi' is already registered"):
        register_family(_phi_spec(order=6))
    with pytest.raises(EmsteerError, match="system_role"):
        TokenizerSpec(style="bytelevel", bos=None, eos="e", pad="p", unk=None, extra=(), chat_template="",
                      system_role="none")


def test_the_throwaway_family_is_gone():
    assert "phi" not in family_names()
