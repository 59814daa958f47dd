"""Generation benchmarks through the provider's own batch path (`interventions.batching.run_batch`).

`hook_overhead`, `monitor_overhead` and `hook_overhead_qwen1.5b_width` time `run_batch` -- the function the
`steer/` provider's batcher runs for every batch: left-padded encoding, the steering / monitor hooks of
`interventions.hooks` installed for the batch, greedy `generate` with a KV cache, decoding -- with and
without an intervention (or monitor) on the same texts.

Equal work on both sides: an intervention changes what the model writes and so when rows stop; a batch
runs until its longest row stops. Both sides therefore run with `generation_config.min_new_tokens` set to
the token budget on the loaded model (run_batch does not pass it, so the model's default applies), and
every call is checked to have generated exactly that many tokens in every row.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from benchmarks.timing import Result, not_measured, ratio_result, time_pairs
from interventions.batching import GenSettings, RowResult, Steering, run_batch
from interventions.directions import Direction
from interventions.errors import EmsteerError
from interventions.generation import encode_batch, render_chat
from interventions.hooks import Intervention, capture
from interventions.layers import decoder_layers, text_decoder
from interventions.model_loading import LoadedModel, LoadKey, load_model
from interventions.organism_cache import verify_organism
from interventions.paths import heldout_prompts_path
from interventions.steer_plan import resolve_plan

ALPHA = 4.0  # the README's example steering strength (units of R)

#: Qwen2.5-1.5B's published config (the figures that set compute per token)
QWEN25_15B: dict[str, Any] = dict(
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
    vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1_000_000.0,
    rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151643, use_sliding_window=False, max_window_layers=21,
)


def heldout_prompts(profile: str = "default") -> list[dict[str, Any]]:
    """The held-out prompt rows of a profile (one-line error with the build command when missing)."""
    path = heldout_prompts_path(profile)
    if not path.is_file():
        raise EmsteerError(f"held-out prompts not found at {path}; run `emsteer organism build --profile {profile}`")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_micro(family: str = "qwen", profile: str = "default") -> LoadedModel:
    """The micro organism exactly as the provider loads it (`resolve_plan` + the process-wide model cache)."""
    verify_organism(family, profile)  # says which command builds it when it is missing
    args = {"profile": profile} if profile != "default" else {}
    plan = resolve_plan(f"micro-{family}", args)
    return load_model(plan.load_key, plan.config.model_type)


def templated(loaded: LoadedModel, prompts: list[str]) -> list[str]:
    """Chat-templated user prompts, as the provider renders them."""
    return [render_chat(loaded.tokenizer, [{"role": "user", "content": p}]) for p in prompts]


@torch.inference_mode()
def mean_residual_norm(loaded: LoadedModel, texts: list[str], layer: int = -1) -> float:
    """Mean per-token L2 norm of the output of decoder `layer` over the non-padding tokens of `texts` (R)."""
    batch = encode_batch(loaded.tokenizer, texts, loaded.device)
    mask = batch["attention_mask"].bool()
    with capture(loaded.model, [layer], lambda i, h: h.float().norm(dim=-1)) as got:
        text_decoder(loaded.model)(**batch, use_cache=False)
    norms = next(iter(got.values()))
    return float(norms[mask.to(norms.device)].mean())


def random_direction(width: int, seed: int = 0) -> torch.Tensor:
    """A seeded random fp32 direction (the cost of a hook does not depend on which direction it adds)."""
    return torch.randn(width, generator=torch.Generator().manual_seed(seed))


@contextmanager
def fixed_length(model: Any, tokens: int) -> Iterator[None]:
    """Make every row of every `generate` on `model` run exactly `tokens` new tokens (min_new_tokens)."""
    config = model.generation_config
    before = getattr(config, "min_new_tokens", None)
    config.min_new_tokens = tokens
    try:
        yield
    finally:
        config.min_new_tokens = before


def _same_length(tokens: int, last: dict[str, list[RowResult]]):
    """A `time_pairs` check: every row generated exactly `tokens` tokens; keeps each side's latest rows."""
    def check(side: str, rows: list[RowResult]) -> None:
        lengths = {r.output_tokens for r in rows}
        if lengths != {tokens}:
            raise EmsteerError(f"side {side}: rows generated {sorted(lengths)} tokens, expected exactly {tokens}")
        last[side] = rows
    return check


def _generation_pair(key: str, what: str, target: float, loaded: LoadedModel, texts: list[str], tokens: int,
                     with_hooks: Steering, without: Steering, pairs: int, detail: dict[str, Any],
                     expect_change: bool | None, warmup_tokens: int | None = None) -> Result:
    """Time run_batch with `with_hooks` (A) vs `without` (B) at a fixed length; check the hooks' effect
    (`expect_change` True: some completion must differ; False: none may; None: only recorded).
    `warmup_tokens` replaces the full-length warm-up call of each side by one of that many tokens."""
    settings = GenSettings(max_new_tokens=tokens)
    seeds = [0] * len(texts)
    with fixed_length(loaded.model, tokens):
        run_a = lambda: run_batch(loaded, texts, seeds, settings, with_hooks)  # noqa: E731
        run_b = lambda: run_batch(loaded, texts, seeds, settings, without)  # noqa: E731
        last: dict[str, list[RowResult]] = {}
        if warmup_tokens is not None:  # a short warm-up on the first row only (full calls cost minutes)
            short = GenSettings(max_new_tokens=warmup_tokens)
            with fixed_length(loaded.model, warmup_tokens):
                run_batch(loaded, texts[:1], seeds[:1], short, with_hooks)
                run_batch(loaded, texts[:1], seeds[:1], short, without)
        times = time_pairs(run_a, run_b, pairs, check=_same_length(tokens, last), warmup=warmup_tokens is None)
    rows_a, rows_b = last["a"], last["b"]
    changed = sum(a.text != b.text for a, b in zip(rows_a, rows_b))
    if expect_change is True and changed == 0:
        raise EmsteerError(f"{key}: the intervention changed no completion; it does not look active")
    if expect_change is False and changed:
        raise EmsteerError(f"{key}: the monitor changed {changed} completions; it must not change generation")
    steps = len(texts) * tokens
    detail = {**detail, "batch": len(texts), "new_tokens": tokens, "rows_changed_by_hooks": changed,
              "tokens_per_s_a": [steps / s for s in times.a], "tokens_per_s_b": [steps / s for s in times.b]}
    if with_hooks.monitor is not None:
        detail["monitor_rows_recorded"] = sum(r.monitor is not None and r.monitor.get("n", 0) > 0 for r in rows_a)
    return ratio_result(key, what, target, times, detail=detail)


def hook_overhead(pairs: int, *, batch: int = 16, tokens: int = 64, family: str = "qwen") -> Result:
    """Batched greedy generation with an active subtract intervention at the final layer / without."""
    loaded = load_micro(family)
    texts = templated(loaded, [r["prompt"] for r in heldout_prompts()][:batch])
    R = mean_residual_norm(loaded, texts)
    iv = Intervention(op="subtract", direction=random_direction(int(loaded.model.config.hidden_size)),
                      layers=[-1], alpha=ALPHA, R=R)
    detail = {"model": f"micro-{family} (default profile)", "op": "subtract", "layer": -1, "alpha": ALPHA, "R": R,
              "direction": "seeded random unit vector (seed 0)"}
    return _generation_pair("hook_overhead", "steer subtract / no intervention (run_batch)", 1.02, loaded, texts,
                            tokens, Steering(intervention=iv), Steering(), pairs, detail, expect_change=True)


def monitor_overhead(pairs: int, *, batch: int = 16, tokens: int = 64, family: str = "qwen") -> Result:
    """Batched greedy generation with a monitor (projection recorded at the final layer) / without."""
    loaded = load_micro(family)
    texts = templated(loaded, [r["prompt"] for r in heldout_prompts()][:batch])
    d = Direction(vector=random_direction(int(loaded.model.config.hidden_size), seed=1))
    detail = {"model": f"micro-{family} (default profile)", "monitor_layer": -1,
              "target_source": "none in issue 7; hook_overhead's 1.02 used"}
    return _generation_pair("monitor_overhead", "monitor / no monitor (run_batch)", 1.02, loaded, texts, tokens,
                            Steering(monitor=d, monitor_layer=-1), Steering(), pairs, detail, expect_change=False)


def random_qwen_width(dtype: torch.dtype = torch.bfloat16, overrides: dict[str, Any] | None = None,
                      seed: int = 0) -> Any:
    """A Qwen2ForCausalLM with Qwen2.5-1.5B's exact config and random weights (N(0, 0.02), norms 1, biases 0).

    Built without transformers' per-module init (slow in bf16 on a CPU) and filled from one seeded generator."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.initialization import no_init_weights

    config = Qwen2Config(**{**QWEN25_15B, **(overrides or {})})
    with no_init_weights():
        model = Qwen2ForCausalLM(config).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                for chunk in p.view(-1).split(1 << 24):
                    chunk.copy_(torch.randn(chunk.numel(), generator=gen).mul_(0.02))
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
    model.tie_weights()
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise EmsteerError("random-init model has non-finite weights")
    return model.eval()


def hook_overhead_real_width(pairs: int, *, batch: int = 4, tokens: int = 16, warmup_tokens: int | None = 1,
                             device: str = "cpu",
                             dtype: torch.dtype = torch.bfloat16, overrides: dict[str, Any] | None = None,
                             key: str = "hook_overhead_qwen1.5b_width") -> Result:
    """`hook_overhead` on a random-init model with Qwen2.5-1.5B's config (tokenizer: micro-qwen's, whose ids
    are all inside the 151,936-token vocabulary), through the same run_batch path."""
    micro = load_micro("qwen")
    model = random_qwen_width(dtype, overrides).to(device)
    loaded = LoadedModel(key=LoadKey(model="random-init:Qwen2.5-1.5B-config", dtype=str(dtype).split(".")[-1],
                                     device=device),
                         model=model, tokenizer=micro.tokenizer, files={}, weights_sha256="random-init")
    texts = templated(loaded, [r["prompt"] for r in heldout_prompts()][:batch])
    R = mean_residual_norm(loaded, texts[:1])  # one row: a full-batch forward costs seconds at this width
    iv = Intervention(op="subtract", direction=random_direction(model.config.hidden_size), layers=[-1],
                      alpha=ALPHA, R=R)
    n_params = sum(p.numel() for p in model.parameters())
    detail = {"model": "random-init Qwen2ForCausalLM, Qwen2.5-1.5B config", "layers": len(decoder_layers(model)),
              "hidden": model.config.hidden_size, "parameters": n_params, "dtype": str(dtype), "device": device,
              "op": "subtract", "layer": -1, "alpha": ALPHA, "R": R, "R_from": "first prompt only",
              "tokenizer": "micro-qwen's (ids < 2,048)",
              "warmup": f"one {warmup_tokens}-token call on the first row per side" if warmup_tokens
              else "one full call per side"}
    try:
        return _generation_pair(key, "steer subtract / no intervention (run_batch), d=1536, 28 layers", 1.02, loaded,
                                texts, tokens, Steering(intervention=iv), Steering(), pairs, detail,
                                expect_change=None, warmup_tokens=warmup_tokens)
    finally:
        del loaded, model


def gpu_tokens_per_s(pairs: int, *, batch: int = 16, tokens: int = 64) -> Result:
    """On a CUDA machine: the real-width figure on the GPU (tokens/s steered vs unsteered in `detail`)."""
    key = "gpu_hook_overhead_qwen1.5b_width"
    what = "steer subtract / none on GPU, Qwen2.5-1.5B config, bf16"
    if not torch.cuda.is_available():
        return not_measured(key, what, "no GPU on this machine", target=1.02)
    result = hook_overhead_real_width(pairs, batch=batch, tokens=tokens, device="cuda:0", key=key)
    result.detail["card"] = torch.cuda.get_device_name(0)
    return result
