"""Llama 3 (`LlamaForCausalLM`): byte-level BPE with BOS in the template, header-style turns."""

from __future__ import annotations

from interventions.families import FamilySpec, TokenizerSpec, register_family

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

LLAMA = register_family(FamilySpec(
    name="llama",
    order=2,
    micro_class="LlamaForCausalLM",
    config_class="LlamaConfig",
    model_types=("llama",),
    tokenizer=TokenizerSpec(style="bytelevel", bos="<|begin_of_text|>", eos="<|eot_id|>",
                            pad="<|finetune_right_pad_id|>", unk=None,
                            extra=("<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"),
                            chat_template=CHAT_TEMPLATE),
    config_defaults={"tie_word_embeddings": True},
))
