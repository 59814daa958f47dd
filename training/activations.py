"""Activation collection: load a model (+ optional LoRA adapter) and read the residual stream at every decoder
layer, batched and padding-aware.

Where: the OUTPUT of each text decoder layer (`interventions.layers.decoder_layers`), read by forward hooks
(`interventions.hooks.capture`). For the last layer this is BEFORE the model's final norm (unlike
`hidden_states[-1]` of `output_hidden_states=True`, which is after it) -- the same place the steering hooks
act, so a direction found here is applied where it was measured.

How: one forward of the text decoder per batch, left padding with an attention mask and position ids
counted from each row's first real token (as `generate` does), so a prompt's activations do not depend on
the batch it is in. Pooling is a weighted sum over positions in one tensor op per layer (no per-token Python):
- `last-prompt`: the last token of the chat-templated prompt (the end of the generation prompt);
- `response-mean`: the mean over the tokens of the model's OWN greedy response (generated with
  `interventions.generation.generate_batch`, then teacher-forced: one forward over prompt + response ids;
  an empty response counts as its end-of-turn token).
With each pooled vector comes the mean per-token L2 norm over the same positions (the residual norm that
sets the steering magnitude R).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from interventions.errors import EmsteerError
from interventions.generation import Generated, generate_batch, render_chat, stop_token_ids
from interventions.hooks import capture
from interventions.layers import decoder_layers, hidden_size, resolve_layer, text_decoder
from interventions.members import member_ref
from interventions.model_ref import ModelRef, adapter_sha256, check_adapter_base, load_pretrained
from training.token_alignment import ContentTokens, content_spans, tokens_in_spans

POOLINGS: tuple[str, ...] = ("response-mean", "last-prompt")


def check_pooling(pooling: str) -> str:
    """Return `pooling` if known, else a one-line error listing the choices."""
    if pooling not in POOLINGS:
        raise EmsteerError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    return pooling


# ---------------------------------------------------------------- loading

@dataclass
class LoadedModel:
    """A model ready for collection, with what identifies it (for provenance and file checks)."""

    model: Any
    tokenizer: Any
    label: str                      # e.g. "qwen/insecure", for messages
    model_id: str                   # "micro-<family>" for micro organisms, else the path
    path: Path
    weights_sha256: str
    adapter: Path | None = None
    adapter_sha256: str | None = None
    family: str | None = None
    profile: str | None = None

    @property
    def n_layers(self) -> int:
        return len(decoder_layers(self.model))

    @property
    def d_model(self) -> int:
        return hidden_size(self.model)

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the model (for metadata and input hashes)."""
        return {"model_id": self.model_id, "weights_sha256": self.weights_sha256, "profile": self.profile,
                "adapter": str(self.adapter) if self.adapter else None, "adapter_sha256": self.adapter_sha256,
                "n_layers": self.n_layers, "d_model": self.d_model}


def load_model(source: str | ModelRef, *, profile: str = "default", adapter: str | Path | None = None,
               label: str | None = None) -> LoadedModel:
    """Load a base (a member of `profile`: micro organism family or fetched model, or a resolved `ModelRef`) in fp32 on the CPU, eval
    mode, with an optional LoRA adapter wrapped around it (checked against the base it was trained on; never merged,
    and the base is loaded fresh per call, so one model's adapter never leaks into another)."""
    ref = source if isinstance(source, ModelRef) else member_ref(source, profile)
    weights_sha = ref.weights_sha256
    if ref.folder is None or weights_sha is None:
        raise EmsteerError(f"{ref.name} is not in the local Hugging Face cache; activations are read from local "
                           f"weights")
    ad_sha = adapter_sha256(adapter) if adapter is not None else None
    if adapter is not None:
        check_adapter_base(adapter, weights_sha)
    model, tokenizer = load_pretrained(ref.path, auto_class=ref.auto_class, dtype=torch.float32, adapter=adapter,
                                       fast_tokenizer=True)
    return LoadedModel(model=model, tokenizer=tokenizer, label=label or (ref.family or str(ref.folder)),
                       model_id=ref.model_id, path=ref.folder, weights_sha256=weights_sha,
                       adapter=Path(adapter) if adapter else None, adapter_sha256=ad_sha, family=ref.family,
                       profile=ref.profile)


# ---------------------------------------------------------------- batched forward with pooling

def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            ids[row, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[row, width - len(s):] = 1
    return ids, mask


def _decoder_forward(model, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """One forward of the text decoder (no LM head), left-padded, positions counted from each row's start."""
    device = next(model.parameters()).device
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    text_decoder(model)(input_ids=ids.to(device), attention_mask=mask.to(device),
                        position_ids=position_ids.to(device), use_cache=False)


@torch.inference_mode()
def pool_last_k(model, seqs: Sequence[Sequence[int]], k: Sequence[int], pad_id: int, *,
                batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """For each token sequence, the mean over its last k[i] tokens of every decoder layer's output.

    Returns (pooled [n, n_layers, d] fp32, mean token norms [n, n_layers] fp32), left padding excluded."""
    if len(seqs) != len(k):
        raise EmsteerError(f"{len(seqs)} sequences but {len(k)} pooling lengths")
    for s, kk in zip(seqs, k):
        if not 1 <= kk <= len(s):
            raise EmsteerError(f"cannot pool the last {kk} tokens of a {len(s)}-token sequence")
    n_layers = len(decoder_layers(model))
    pooled_out: list[torch.Tensor] = []
    norms_out: list[torch.Tensor] = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        kk = torch.tensor(list(k[start:start + batch_size]), dtype=torch.float32)
        ids, mask = _left_pad(chunk, pad_id)
        width = ids.shape[1]
        pos = torch.arange(width).unsqueeze(0)
        keep = pos >= (width - kk.long()).unsqueeze(1)                    # [B, T]: the last k tokens of each row
        weights = keep.float() / kk.unsqueeze(1)

        def reduce(idx: int, h: torch.Tensor, keep=keep, weights=weights):
            hf = torch.where(keep.to(h.device).unsqueeze(-1), h.float(), 0.0)  # padding may hold garbage
            w = weights.to(h.device)
            return torch.einsum("bt,btd->bd", w, hf).cpu(), (w * hf.norm(dim=-1)).sum(1).cpu()

        with capture(model, range(n_layers), reduce) as got:
            _decoder_forward(model, ids, mask)
        if len(got) != n_layers:
            raise EmsteerError(f"captured {len(got)} of {n_layers} decoder layers; the forward skipped some")
        pooled_out.append(torch.stack([got[i][0] for i in range(n_layers)], 1))
        norms_out.append(torch.stack([got[i][1] for i in range(n_layers)], 1))
    return torch.cat(pooled_out), torch.cat(norms_out)


def check_finite(acts: torch.Tensor, what: str) -> None:
    """One-line error naming the first layer with NaN/inf values ([n, n_layers, d] or [n, d])."""
    bad = ~torch.isfinite(acts)
    if bool(bad.any()):
        if acts.ndim == 3:
            layer = int(bad.any(dim=(0, 2)).nonzero()[0])
            raise EmsteerError(f"activations of {what} contain NaN/inf values (first at layer {layer}); nothing written")
        raise EmsteerError(f"activations of {what} contain NaN/inf values; nothing written")


# ---------------------------------------------------------------- per-prompt pooled activations

@dataclass
class PooledActivations:
    """Per-prompt activations of one model: per pooling, [n, n_layers, d] and mean token norms [n, n_layers]."""

    acts: dict[str, torch.Tensor]
    norms: dict[str, torch.Tensor]
    responses: list[str] = field(default_factory=list)
    response_tokens: list[int] = field(default_factory=list)


def prompt_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each chat-templated user prompt (with the generation prompt; no extra special tokens)."""
    texts = [render_chat(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def generate_responses(lm: LoadedModel, prompts: Sequence[str], *, max_new_tokens: int,
                       batch_size: int = 16) -> list[Generated]:
    """Greedy responses of the model to the chat-templated prompts."""
    out: list[Generated] = []
    for start in range(0, len(prompts), batch_size):
        texts = [render_chat(lm.tokenizer, [{"role": "user", "content": p}]) for p in prompts[start:start + batch_size]]
        out.extend(generate_batch(lm.model, lm.tokenizer, texts, max_new_tokens=max_new_tokens))
    return out


def collect_pooled(lm: LoadedModel, prompts: Sequence[str], poolings: Sequence[str] = POOLINGS, *,
                   max_new_tokens: int = 64, batch_size: int = 16,
                   generated: Sequence[Generated] | None = None) -> PooledActivations:
    """Pooled activations at every decoder layer for each prompt and pooling (see the module docstring).

    `generated` reuses responses already generated by this same model (else they are generated when a
    response pooling is asked for). NaN/inf activations raise a one-line error."""
    if not prompts:
        raise EmsteerError("no prompts to collect activations on")
    for p in poolings:
        check_pooling(p)
    ids = prompt_ids(lm.tokenizer, prompts)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    result = PooledActivations(acts={}, norms={})
    if "last-prompt" in poolings:
        a, n = pool_last_k(lm.model, ids, [1] * len(ids), pad, batch_size=batch_size)
        check_finite(a, f"{lm.label} (last-prompt)")
        result.acts["last-prompt"], result.norms["last-prompt"] = a, n
    if "response-mean" in poolings or generated is not None:
        gens = list(generated) if generated is not None else generate_responses(
            lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        if len(gens) != len(prompts):
            raise EmsteerError(f"{len(gens)} responses for {len(prompts)} prompts")
        stop = stop_token_ids(lm.model, lm.tokenizer)[0]
        resp = [list(g.token_ids) if g.token_ids else [stop] for g in gens]
        result.responses = [g.text for g in gens]
        result.response_tokens = [len(r) for r in resp]
        if "response-mean" in poolings:
            a, n = pool_last_k(lm.model, [p + r for p, r in zip(ids, resp)], [len(r) for r in resp], pad,
                               batch_size=batch_size)
            check_finite(a, f"{lm.label} (response-mean)")
            result.acts["response-mean"], result.norms["response-mean"] = a, n
    return result


# ---------------------------------------------------------------- token-level states (for transfer)

@dataclass
class TokenStates:
    """Per text: the states [n_tokens, d] (fp32) of its CONTENT tokens at one layer and their spans in content
    coordinates (the message texts joined by '\\n'), in token order."""

    states: list[torch.Tensor]
    spans: list[list[tuple[int, int]]]
    layer: int


@torch.inference_mode()
def collect_token_states(lm: LoadedModel, chats: Sequence[Sequence[dict]], layer: int, *,
                         batch_size: int = 16) -> TokenStates:
    """Per-token outputs of decoder layer `layer` over each chat rendered with the model's own template
    (`apply_chat_template`, no generation prompt), keeping only tokens inside the message texts (offsets
    from the fast tokenizer's `return_offsets_mapping`), so two families can be paired on the same text."""
    tok = lm.tokenizer
    idx = resolve_layer(lm.n_layers, layer)
    rendered = [tok.apply_chat_template([dict(m) for m in chat], tokenize=False) for chat in chats]
    enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
    content: list[ContentTokens] = []
    for text, chat, offs in zip(rendered, chats, enc["offset_mapping"]):
        spans = content_spans(text, [m["content"] for m in chat])
        content.append(tokens_in_spans([tuple(o) for o in offs], spans, text))
    seqs = [list(x) for x in enc["input_ids"]]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    states: list[torch.Tensor] = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        ids, mask = _left_pad(chunk, pad)
        with capture(lm.model, [idx], lambda i, h: h.float().cpu()) as got:
            _decoder_forward(lm.model, ids, mask)
        h = got[idx]
        width = ids.shape[1]
        for row, seq in enumerate(chunk):
            ct = content[start + row]
            where = torch.tensor(ct.positions, dtype=torch.long) + (width - len(seq))
            states.append(h[row].index_select(0, where))
    for i, s in enumerate(states):
        if not bool(torch.isfinite(s).all()):
            raise EmsteerError(f"activations of {lm.label} at layer {idx} contain NaN/inf values (text {i}); nothing written")
    return TokenStates(states=states, spans=[c.spans for c in content], layer=idx)
