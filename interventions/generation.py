"""Batched chat generation with left padding and KV cache: one place used by the provider, the organisms'
own measurements and the benchmarks.

Prompts are rendered with the tokenizer's chat template and tokenized with `add_special_tokens=False`,
so a template that already writes BOS never gets a second one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Generated:
    """One completion: decoded text, its token count (no padding) and why it stopped."""
    text: str
    output_tokens: int
    input_tokens: int
    stop_reason: str  # "stop" (end-of-turn token) | "max_tokens"
    token_ids: list[int] | None = None  # the generated ids, stop token and padding excluded


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The chat-template string of `messages` with the generation prompt appended."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_token_ids(model, tokenizer) -> list[int]:
    """Token ids that end an assistant turn (generation config's eos plus the tokenizer's eos)."""
    ids: list[int] = []
    eos = getattr(model.generation_config, "eos_token_id", None)
    for value in (eos if isinstance(eos, list) else [eos]) + [tokenizer.eos_token_id]:
        if value is not None and value not in ids:
            ids.append(int(value))
    return ids


def encode_batch(tokenizer, texts: Sequence[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Left-padded input ids and attention mask for already-templated texts (no extra special tokens)."""
    tokenizer.padding_side = "left"
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


@torch.inference_mode()
def generate_batch(model, tokenizer, texts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                   top_p: float | None = None, seed: int | None = None) -> list[Generated]:
    """Generate one completion per templated text in a single left-padded batch with KV cache.

    temperature 0 means greedy decoding."""
    if not texts:
        return []
    device = next(model.parameters()).device
    batch = encode_batch(tokenizer, texts, device)
    stops = stop_token_ids(model, tokenizer)
    kwargs: dict = dict(max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                        use_cache=True)
    if temperature and temperature > 0:
        if seed is not None:
            torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p if top_p is not None else 1.0, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    out = model.generate(**batch, **kwargs)
    prompt_len = batch["input_ids"].shape[1]
    results = []
    for row in range(out.shape[0]):
        new = out[row, prompt_len:].tolist()
        n, reason = len(new), "max_tokens"
        for i, tok in enumerate(new):
            if tok in stops:
                n, reason = i, "stop"
                break
        text = tokenizer.decode(new[:n], skip_special_tokens=True)
        results.append(Generated(text=text, output_tokens=n + (1 if reason == "stop" else 0),
                                 input_tokens=int(batch["attention_mask"][row].sum()), stop_reason=reason,
                                 token_ids=new[:n]))
    return results
