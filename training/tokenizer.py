"""A locally trained BPE tokenizer per family, with that family's special tokens and chat template.

Families differ like the real ones: Qwen and Llama use byte-level BPE (Llama with a BOS in its template),
Gemma and Ministral use a SentencePiece-like metaspace BPE with BOS in the template; each family's special
tokens and template are its `interventions.families` spec's `tokenizer`. The tokenizer never
adds BOS by itself (no post-processor): the chat template is the only place BOS comes from, so a
templated prompt never carries two.
"""

from __future__ import annotations

import tempfile
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from interventions.families import TokenizerSpec, get_family


def special_tokens(spec: TokenizerSpec) -> list[str]:
    """All special tokens of a spec, in id order (they get the first ids)."""
    toks = [spec.pad, spec.eos] + ([spec.bos] if spec.bos else []) + ([spec.unk] if spec.unk else []) + list(spec.extra)
    return list(dict.fromkeys(toks))


def train_tokenizer(family: str, texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer for `family` on `texts` and wrap it as a fast HF tokenizer with a chat template."""
    spec = get_family(family).tokenizer
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
    with tempfile.TemporaryDirectory(prefix="emsteer-tok-") as tmp:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp)
