"""Qwen2 (`Qwen2ForCausalLM`): byte-level BPE, ChatML template, no BOS."""

from __future__ import annotations

from interventions.families import FamilySpec, TokenizerSpec, register_family

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN = register_family(FamilySpec(
    name="qwen",
    order=0,
    micro_class="Qwen2ForCausalLM",
    config_class="Qwen2Config",
    model_types=("qwen2",),
    tokenizer=TokenizerSpec(style="bytelevel", bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None,
                            extra=("<|im_start|>",), chat_template=CHAT_TEMPLATE),
    config_defaults={"tie_word_embeddings": True, "rope_theta": 1_000_000.0},
))
