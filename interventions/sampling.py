"""Per-row seeded sampling: a sample's sampled completion does not depend on which batch it landed in.

`RowSampler` is a transformers `LogitsProcessor` used with greedy decoding (`do_sample=False`): at each step
it applies temperature / top-k / top-p to every row, draws one uniform number per row from that row's own
`torch.Generator`, picks the token by inverse CDF (float64, tokens in id order), and returns scores that
are -inf everywhere except the picked token, so greedy decoding emits exactly it. Each row's generator is
seeded by `row_seed(...)` and advanced once per step, so row r's draws are the same whatever the other rows.
"""

from __future__ import annotations

from hashlib import sha256
from typing import Sequence

import torch
from transformers.generation import LogitsProcessor

from interventions.errors import EmsteerError


def row_seed(base_seed: int, text: str, occurrence: int = 0) -> int:
    """A 63-bit seed for one request: sha256 of (base seed, the templated prompt, its occurrence number).

    `occurrence` counts earlier requests with the same prompt and settings (epochs, repeats), so repeats
    get fresh draws while the set of completions stays reproducible."""
    digest = sha256(f"emsteer-sample:{int(base_seed)}:{int(occurrence)}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class RowSampler(LogitsProcessor):
    """Sample each row with its own generator; see the module docstring."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float | None = None,
                 top_k: int | None = None) -> None:
        if not temperature > 0:
            raise EmsteerError(f"RowSampler needs temperature > 0, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise EmsteerError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature = float(temperature)
        self.top_p = top_p
        self.top_k = top_k if top_k and top_k > 0 else None
        self.generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

    def _uniforms(self, device: torch.device) -> torch.Tensor:
        draws = [torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators]
        return torch.cat(draws).to(device).unsqueeze(1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise EmsteerError(f"RowSampler has {len(self.generators)} seeds but the batch has {scores.shape[0]} rows")
        logits = scores.double() / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p is not None and self.top_p < 1.0:
            sorted_p, order = torch.sort(probs, dim=-1, descending=True)
            before = sorted_p.cumsum(-1) - sorted_p  # mass strictly before each token
            drop_sorted = before >= self.top_p
            drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
            probs = probs.masked_fill(drop, 0.0)
        cdf = probs.cumsum(-1)
        target = self._uniforms(cdf.device) * cdf[:, -1:]
        picked = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, picked, 0.0)
