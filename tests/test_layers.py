"""Layer lookup on tiny random-init models of every supported class (identity checks, not just shapes)."""

from __future__ import annotations

import pytest
import torch
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
    MistralForCausalLM,
    PixtralVisionConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from interventions.errors import EmsteerError
from interventions.layers import decoder_layers, hidden_size, num_layers, resolve_layer, text_decoder, unwrap_model


def _common(hidden: int, layers: int) -> dict:
    return dict(
        vocab_size=48,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=64,
    )


def tiny(kind: str, hidden: int = 32, layers: int = 2):
    torch.manual_seed(0)
    c = _common(hidden, layers)
    if kind == "qwen":
        return Qwen2ForCausalLM(Qwen2Config(**c)).eval()
    if kind == "gemma":
        return Gemma2ForCausalLM(Gemma2Config(**c, attn_implementation="eager")).eval()
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**c)).eval()
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**c)).eval()
    if kind == "ministral3":
        rope = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 4,
                "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}
        return Ministral3ForCausalLM(Ministral3Config(**c, rope_parameters=rope)).eval()
    if kind == "mistral3":
        vision = PixtralVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, head_dim=8,
            image_size=28, patch_size=14,
        )
        cfg = Mistral3Config(vision_config=vision, text_config=MistralConfig(**c), image_token_index=5)
        return Mistral3ForConditionalGeneration(cfg).eval()
    raise ValueError(kind)


CAUSAL = [("qwen", Qwen2ForCausalLM), ("gemma", Gemma2ForCausalLM), ("llama", LlamaForCausalLM),
          ("mistral", MistralForCausalLM), ("ministral3", Ministral3ForCausalLM)]


@pytest.mark.parametrize("kind,cls", CAUSAL)
def test_causal_lm_layers_are_model_model_layers(kind, cls):
    m = tiny(kind, hidden=32 if kind != "llama" else 48, layers=2)
    assert isinstance(m, cls)
    assert decoder_layers(m) is m.model.layers
    assert text_decoder(m) is m.model
    assert num_layers(m) == 2
    assert hidden_size(m) == (32 if kind != "llama" else 48)


def test_mistral3_multimodal_uses_language_model_not_vision_tower():
    m = tiny("mistral3", hidden=32, layers=2)
    layers = decoder_layers(m)
    assert layers is m.model.language_model.layers
    assert layers is not m.model.vision_tower.transformer.layers
    assert len(m.model.vision_tower.transformer.layers) == 3  # the vision tower's layers differ in count
    assert len(layers) == 2
    assert hidden_size(m) == 32  # text width, not the vision tower's 16


def test_peft_lora_wrapper_is_peeled():
    from peft import LoraConfig, get_peft_model

    base = tiny("qwen")
    wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert unwrap_model(wrapped) is base
    assert decoder_layers(wrapped) is base.model.layers
    assert hidden_size(wrapped) == 32
    assert resolve_layer(wrapped, -1) == 1


def test_peft_on_multimodal():
    from peft import LoraConfig, get_peft_model

    base = tiny("mistral3")
    wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    assert decoder_layers(wrapped) is base.model.language_model.layers


@pytest.mark.parametrize("layer,expected", [(0, 0), (3, 3), (-1, 3), (-4, 0), (-2, 2)])
def test_resolve_layer(layer, expected):
    assert resolve_layer(4, layer) == expected


@pytest.mark.parametrize("layer", [4, -5, 100])
def test_resolve_layer_out_of_range_names_range(layer):
    with pytest.raises(EmsteerError, match=r"valid: -4\.\.3"):
        resolve_layer(4, layer)


def test_resolve_layer_rejects_non_int():
    with pytest.raises(EmsteerError):
        resolve_layer(4, 1.0)  # type: ignore[arg-type]
    with pytest.raises(EmsteerError):
        resolve_layer(4, True)


def test_resolve_layer_from_model():
    m = tiny("gemma", layers=2)
    assert resolve_layer(m, -1) == 1
    with pytest.raises(EmsteerError, match="2 decoder layers"):
        resolve_layer(m, 2)


def test_object_without_decoder_is_a_clear_error():
    with pytest.raises(EmsteerError, match="get_decoder"):
        decoder_layers(torch.nn.Linear(2, 2))
