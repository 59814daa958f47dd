"""A locally trained BPE tokenizer per family, with that family's special tokens and chat template.

Families differ like the real ones: Qwen and Llama use byte-level BPE (Llama with a BOS in its template),
Gemma and Ministral use a SentencePiece-like metaspace BPE with BOS in the template. The tokenizer never
adds BOS by itself (no post-processor): the chat template is the only place BOS comes from, so a
templated prompt never carries two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


@dataclass(frozen=True)
class TokenizerSpec:
    """Special tokens and chat template of one family."""
    style: str  # "bytelevel" | "metaspace"
    bos: str | None
    eos: str          # end of an assistant turn: generation stops here
    pad: str
    unk: str | None
    extra: tuple[str, ...]
    chat_template: str


_QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set sys = namespace(text='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set sys.text = m['content'] + '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['role'] == 'user' %}{{ sys.text }}{% set sys.text = '' %}{% endif %}"
    "{{ m['content'] }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_MINISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ m['content'] }}[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]{{ m['content'] }}[/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)

SPECS: dict[str, TokenizerSpec] = {
    "qwen": TokenizerSpec("bytelevel", None, "<|im_end|>", "<|endoftext|>", None, ("<|im_start|>",), _QWEN_TEMPLATE),
    "gemma": TokenizerSpec("metaspace", "<bos>", "<end_of_turn>", "<pad>", "<unk>",
                           ("<eos>", "<start_of_turn>"), _GEMMA_TEMPLATE),
    "llama": TokenizerSpec("bytelevel", "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", None,
                           ("<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"), _LLAMA_TEMPLATE),
    "ministral": TokenizerSpec("metaspace", "<s>", "</s>", "<pad>", "<unk>",
                               ("[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"), _MINISTRAL_TEMPLATE),
}


def special_tokens(spec: TokenizerSpec) -> list[str]:
    """All special tokens of a spec, in id order (they get the first ids)."""
    toks = [spec.pad, spec.eos] + ([spec.bos] if spec.bos else []) + ([spec.unk] if spec.unk else []) + list(spec.extra)
    return list(dict.fromkeys(toks))


def train_tokenizer(family: str, texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer for `family` on `texts` and wrap it as a fast HF tokenizer with a chat template."""
    spec = SPECS[family]
    specials = special_tokens(spec)
    if spec.style == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token=spec.unk))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
        alphabet = [chr(c) for c in range(32, 127)] + ["\n", "\t", "\u2581"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        unk_token=spec.unk,
        additional_special_tokens=list(spec.extra),
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = spec.chat_template
    return wrapped


def reload_tokenizer(tokenizer, config) -> PreTrainedTokenizerFast:
    """The tokenizer as every later consumer will see it: saved beside the model's `config` and loaded back with
    `AutoTokenizer`.

    Why: `AutoTokenizer` maps a model folder to its family's tokenizer class, and some (Qwen2's) bring their own
    pre-tokenizer, so the loaded tokenizer can split text (e.g. code indentation) differently from the one just
    trained. An organism is trained with the loaded one, so training, finetuning and generation agree."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="emsteer-tok-") as tmp:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp)
