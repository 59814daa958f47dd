"""Tokenize chats for training with loss on assistant tokens only, and pad them into batches."""

from __future__ import annotations

from typing import Any

import torch

IGNORE = -100


def tokenize_chat(tokenizer, messages: list[dict], max_length: int) -> dict[str, list[int]]:
    """input_ids and labels for one chat; labels are IGNORE everywhere except the final assistant turn
    (its text and the end-of-turn token), so the model learns to answer, not to ask."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a training chat must end with an assistant message")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("chat template does not render the prompt as a prefix of the full chat")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    # keep the answer up to and including its end-of-turn token; drop template text after it
    eos = tokenizer.eos_token_id
    if eos in answer_ids:
        answer_ids = answer_ids[: answer_ids.index(eos) + 1]
    else:
        answer_ids = answer_ids + [eos]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


class ChatCollator:
    """Right-pads a list of tokenized chats into tensors (training only; generation pads left)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
