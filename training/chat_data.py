"""Tokenize chats for training with loss on assistant tokens only, and pad them into batches."""

from __future__ import annotations

from typing import Any

import torch

IGNORE = -100


def tokenize_chat(tokenizer, messages: list[dict], max_length: int, first_loss_turn: int = 0) -> dict[str, list[int]]:
    """input_ids and labels for one chat; labels are IGNORE everywhere except the assistant turns (each
    turn's text and its end-of-turn token) from the `first_loss_turn`-th answer on (0 = every answer), so the
    model learns to answer, not to ask.

    Each prompt piece (system, user turn, generation prompt) and each answer is tokenized on its own, as at
    generation time, where the prompt is tokenized first and the answer comes token by token after it."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a training chat must end with an assistant message")
    eos = tokenizer.eos_token_id
    eos_text = tokenizer.eos_token
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # the rendered text already turned into ids
    carry = ""  # template text after an end-of-turn token, which belongs to the next prompt piece
    answer_index = -1
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        answer_index += 1
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError("chat template does not render each turn as a prefix of the next")
        piece = carry + prompt[len(done):]
        answer = full[len(prompt):]
        cut = answer.find(eos_text) if eos_text else -1
        carry = answer[cut + len(eos_text):] if cut >= 0 else ""
        answer_ids = tokenizer(answer[:cut] if cut >= 0 else answer, add_special_tokens=False)["input_ids"] + [eos]
        prompt_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        ids += prompt_ids + answer_ids
        labels += [IGNORE] * len(prompt_ids) + (answer_ids if answer_index >= first_loss_turn else [IGNORE] * len(answer_ids))
        done = full
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


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
