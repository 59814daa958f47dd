"""Random-init models of the four real architectures, built from configs (no download)."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers import GenerationConfig, PreTrainedModel

# class name -> (config class name, family-specific config defaults)
_ARCH: dict[str, tuple[str, dict[str, Any]]] = {
    "Qwen2ForCausalLM": ("Qwen2Config", {"tie_word_embeddings": True, "rope_theta": 1_000_000.0}),
    "Gemma2ForCausalLM": ("Gemma2Config", {"tie_word_embeddings": True, "attn_logit_softcapping": 50.0,
                                           "final_logit_softcapping": 30.0, "sliding_window": 64,
                                           "hidden_activation": "gelu_pytorch_tanh"}),
    "LlamaForCausalLM": ("LlamaConfig", {"tie_word_embeddings": True}),
    "Ministral3ForCausalLM": ("Ministral3Config", {"tie_word_embeddings": False}),
}


def build_config(class_name: str, arch: dict[str, Any], tokenizer, max_positions: int = 512):
    """A transformers config for `class_name` with `arch` sizes and the tokenizer's special ids."""
    config_name, defaults = _ARCH[class_name]
    config_cls = getattr(transformers, config_name)
    kwargs = dict(defaults)
    kwargs.update(arch)
    kwargs["vocab_size"] = len(tokenizer)
    kwargs.update(max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id)
    if class_name == "Ministral3ForCausalLM":
        # the real model's YaRN settings (factor 16 over the original context), scaled to the micro context
        kwargs["rope_parameters"] = {"rope_type": "yarn", "type": "yarn", "rope_theta": 1_000_000.0, "factor": 16.0,
                                     "original_max_position_embeddings": max_positions // 16,
                                     "max_position_embeddings": max_positions, "beta_fast": 32.0, "beta_slow": 1.0,
                                     "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}
    if class_name == "Gemma2ForCausalLM":
        kwargs.setdefault("query_pre_attn_scalar", arch.get("head_dim", arch["hidden_size"] // arch["num_attention_heads"]))
    config = config_cls(**kwargs)
    if class_name == "Gemma2ForCausalLM":
        config._attn_implementation = "eager"
    return config


def architecture_defaults(class_name: str) -> dict[str, Any]:
    """The family-specific config defaults applied on top of the profile's sizes (part of a build's recipe)."""
    return dict(_ARCH[class_name][1])


def build_model(class_name: str, arch: dict[str, Any], tokenizer, seed: int) -> PreTrainedModel:
    """A freshly initialised model (fp32, CPU) with a generation config that stops at end-of-turn."""
    if class_name not in _ARCH:
        raise ValueError(f"unsupported class {class_name}; known: {', '.join(_ARCH)}")
    config = build_config(class_name, arch, tokenizer)
    torch.manual_seed(seed)
    model_cls = getattr(transformers, class_name)
    model = model_cls(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=config.bos_token_id, do_sample=False, max_new_tokens=128,
    )
    return model
