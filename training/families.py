"""Random-init micro models of the registered families' architectures, built from configs (no download).

What differs between families (config class, defaults, derived values, attention kernel) is declared in their
`interventions.families` spec; this module only assembles the config and the model."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers import GenerationConfig, PreTrainedModel

from interventions.families import FamilySpec, family_for_class, family_specs


def micro_spec(class_name: str) -> FamilySpec:
    """The family spec whose micro organism has class `class_name` (an error names the known classes)."""
    spec = family_for_class(class_name)
    if spec is None:
        raise ValueError(f"unsupported class {class_name}; known: {', '.join(s.micro_class for s in family_specs())}")
    return spec


def build_config(class_name: str, arch: dict[str, Any], tokenizer, max_positions: int = 512):
    """A transformers config for `class_name` with `arch` sizes and the tokenizer's special ids."""
    spec = micro_spec(class_name)
    config_cls = getattr(transformers, spec.config_class)
    kwargs = dict(spec.config_defaults)
    kwargs.update(arch)
    kwargs["vocab_size"] = len(tokenizer)
    kwargs.update(max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id)
    if spec.derived_config is not None:
        kwargs.update(spec.derived_config(kwargs, max_positions))
    config = config_cls(**kwargs)
    if spec.attn_implementation is not None:
        config._attn_implementation = spec.attn_implementation
    return config


def architecture_defaults(class_name: str) -> dict[str, Any]:
    """The family-specific config defaults applied on top of the profile's sizes (part of a build's recipe)."""
    return dict(micro_spec(class_name).config_defaults)


def build_model(class_name: str, arch: dict[str, Any], tokenizer, seed: int) -> PreTrainedModel:
    """A freshly initialised model (fp32, CPU) with a generation config that stops at end-of-turn."""
    config = build_config(class_name, arch, tokenizer)
    torch.manual_seed(seed)
    model_cls = getattr(transformers, class_name)
    model = model_cls(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=config.bos_token_id, do_sample=False, max_new_tokens=128,
    )
    return model
