"""Gemma-2 (`Gemma2ForCausalLM`): metaspace BPE with BOS; no system role (its text opens the first user turn);
logit softcapping, which needs eager attention; the embedding scale sits inside the embedding module."""

from __future__ import annotations

from typing import Any, Mapping

from interventions.families import FamilySpec, TokenizerSpec, register_family

CHAT_TEMPLATE = (
    "{{ bos_token }}{% set sys = namespace(text='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set sys.text = m['content'] + '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['role'] == 'user' %}{{ sys.text }}{% set sys.text = '' %}{% endif %}"
    "{{ m['content'] }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def query_scale(config: Mapping[str, Any], max_positions: int) -> dict[str, Any]:
    """Gemma-2 scales queries by 1/sqrt(query_pre_attn_scalar): the head size unless the sizes set it."""
    head_dim = config.get("head_dim", config["hidden_size"] // config["num_attention_heads"])
    return {"query_pre_attn_scalar": config.get("query_pre_attn_scalar", head_dim)}


GEMMA = register_family(FamilySpec(
    name="gemma",
    order=1,
    micro_class="Gemma2ForCausalLM",
    config_class="Gemma2Config",
    model_types=("gemma2",),
    tokenizer=TokenizerSpec(style="metaspace", bos="<bos>", eos="<end_of_turn>", pad="<pad>", unk="<unk>",
                            extra=("<eos>", "<start_of_turn>"), chat_template=CHAT_TEMPLATE,
                            system_role="first_user_turn"),
    config_defaults={"tie_word_embeddings": True, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                     "sliding_window": 64, "hidden_activation": "gelu_pytorch_tanh"},
    derived_config=query_scale,
    attn_implementation="eager",
))
