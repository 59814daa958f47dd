"""Ministral 3 (`Ministral3ForCausalLM`; real checkpoints are `Mistral3ForConditionalGeneration`, whose text
decoder has `text_model_type` ministral3): metaspace BPE with BOS, `[INST]` turns with no assistant header,
YaRN rope scaling."""

from __future__ import annotations

from typing import Any, Mapping

from interventions.families import FamilySpec, TokenizerSpec, register_family

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ m['content'] }}[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]{{ m['content'] }}[/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def yarn_rope(config: Mapping[str, Any], max_positions: int) -> dict[str, Any]:
    """The real model's YaRN settings (factor 16 over the original context), scaled to the micro context."""
    return {"rope_parameters": {"rope_type": "yarn", "type": "yarn", "rope_theta": 1_000_000.0, "factor": 16.0,
                                "original_max_position_embeddings": max_positions // 16,
                                "max_position_embeddings": max_positions, "beta_fast": 32.0, "beta_slow": 1.0,
                                "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}}


MINISTRAL = register_family(FamilySpec(
    name="ministral",
    order=3,
    micro_class="Ministral3ForCausalLM",
    config_class="Ministral3Config",
    model_types=("ministral3", "mistral3", "ministral"),
    tokenizer=TokenizerSpec(style="metaspace", bos="<s>", eos="</s>", pad="<pad>", unk="<unk>",
                            extra=("[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"),
                            chat_template=CHAT_TEMPLATE, generation_header=False),
    config_defaults={"tie_word_embeddings": False},
    derived_config=yarn_rope,
))
