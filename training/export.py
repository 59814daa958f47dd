"""`emsteer export`: a steered model as a standard transformers checkpoint that loads with no custom code.

The intervention is resolved exactly as the `steer/` provider resolves it (`interventions.steer_plan`), then:
the LoRA adapter is merged into the weights (peft `merge_and_unload`); an additive or subtractive shift at one
decoder layer (every position) becomes a bias on that layer's MLP output projection, whose output the layer adds
to the residual stream, so the layer's output gains exactly `delta`. That needs a class whose MLP output projection
can hold a bias: `LlamaForCausalLM` (`mlp_bias`), and `Qwen2ForCausalLM` written as the `LlamaForCausalLM` it is
equivalent to (`attention_bias` for Qwen2's q/k/v biases, a zero o_proj bias). Where no exact form exists (post-norm
layers such as Gemma 2 and Gemma 3, whose residual writes pass a norm; Ministral 3, whose attention has no Llama
equivalent and whose MLP holds no bias; ablation, which depends on the residual itself) the command says so in one
line and names what can be exported. A parity check (greedy completions and logits of the exported folder through
plain transformers vs the model with the same intervention applied by the provider's hook) runs before the folder
is published; export fails when they differ beyond float tolerance.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from interventions.atomic import atomic_dir, write_json_atomic
from interventions.errors import EmsteerError
from interventions.generation import generate_batch, render_chat
from interventions.hooks import steer
from interventions.model_ref import load_pretrained
from interventions.steer_plan import SteerPlan, resolve_plan
from interventions.weights_hash import weights_sha256

__all__ = ["BIAS_CLASSES", "ExportResult", "check_exportable", "export_model", "parity", "parity_prompts"]

Log = Callable[[str], None]
# classes whose shift at one layer has an exact bias form, and the class the exported folder is written as
BIAS_CLASSES: dict[str, str] = {"LlamaForCausalLM": "LlamaForCausalLM", "Qwen2ForCausalLM": "LlamaForCausalLM"}
EXPORT_FILE = "export.json"
LOGIT_TOLERANCE = 1e-3  # max |logit difference| accepted (fp32; the bias adds in another order than the hook)


@dataclass
class ExportResult:
    """Where the checkpoint went, its provenance record and the parity figures."""

    folder: Path
    record: dict[str, Any]


def check_exportable(plan: SteerPlan) -> str:
    """The transformers class the export writes; one line naming why not (and what can be) when no exact form
    exists. Nothing is loaded."""
    source = (plan.config.architectures or ("?",))[0]
    iv = plan.intervention
    if iv is None:
        return source  # the adapter merged (or a plain copy): any class
    exportable = "variant none (the adapter merged, no intervention)"
    if source not in BIAS_CLASSES:
        post_norm = ("its layers are post-norm (each residual write passes a norm), so no weight or bias adds a "
                     "fixed vector to a layer's output")
        why = {"Gemma2ForCausalLM": post_norm, "Gemma3ForCausalLM": post_norm,
               "Ministral3ForCausalLM": "its MLP holds no bias and its attention (Llama-4 scaling, sliding window) "
                                        "has no equivalent class that does"}.get(
            source, "no exactly equivalent configuration with a bias on the layer's output is known for it")
        raise EmsteerError(f"cannot export {plan.variant} {iv.op} for {source} exactly: {why}; exportable for "
                           f"{source}: {exportable}")
    if iv.op == "ablate":
        raise EmsteerError(f"cannot export op ablate exactly: removing the direction's component depends on the "
                           f"residual itself, which no weight change reproduces at one layer; exportable: add or "
                           f"subtract (a bias), or {exportable}")
    if iv.positions != "all":
        raise EmsteerError(f"cannot export positions={iv.positions} exactly: a bias acts on every position; "
                           f"use positions=all")
    return BIAS_CLASSES[source]


def _merged(plan: SteerPlan) -> tuple[Any, Any]:
    """The base with the plan's adapter merged (fp32, CPU), and its tokenizer."""
    model, tokenizer = load_pretrained(plan.load_key.model, auto_class=plan.load_key.auto_class, dtype=torch.float32,
                                       adapter=plan.adapter_dir)
    if plan.adapter_dir is not None:
        model = model.merge_and_unload()
    model.train(False)  # inference mode (what .eval() does)
    return model, tokenizer


def _with_bias(model: Any, target_class: str, layer: int, delta: torch.Tensor) -> Any:
    """`model` rewritten as `target_class` with MLP (and, from Qwen2, attention) biases; the down_proj bias of
    `layer` is `delta`, every other added bias zero."""
    import transformers  # deferred: loaded with the model already; kept out of module import

    config = model.config.to_dict()
    source = config.get("architectures", ["?"])[0]
    keep = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "transformers_version")}
    keep.update(mlp_bias=True, attention_bias=source == "Qwen2ForCausalLM" or bool(config.get("attention_bias")))
    for key in ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types"):
        keep.pop(key, None)  # Qwen2's sliding-window settings: checked off below
    if source == "Qwen2ForCausalLM" and config.get("use_sliding_window"):
        raise EmsteerError("cannot export a Qwen2 model that uses sliding-window attention as Llama exactly")
    new_config = transformers.LlamaConfig(**keep)
    new_config.architectures = [target_class]
    new = getattr(transformers, target_class)(new_config)
    new.train(False)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    unexpected = [k for k in unexpected if not k.endswith("rotary_emb.inv_freq")]
    if unexpected or any(not k.endswith(".bias") for k in missing):
        raise EmsteerError(f"export to {target_class}: weights do not map one to one "
                           f"(missing {[k for k in missing if not k.endswith('.bias')][:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        for name in missing:  # the biases the source class lacks: zero
            new.get_parameter(name).zero_()
        new.model.layers[layer].mlp.down_proj.bias.copy_(delta.to(new.model.layers[layer].mlp.down_proj.bias.dtype))
    if getattr(new_config, "tie_word_embeddings", False):
        new.tie_weights()
    return new


def parity(folder: Path, reference: Any, plan: SteerPlan, tokenizer: Any, prompts: list[str], *,
           max_new_tokens: int) -> dict[str, Any]:
    """Greedy completions and prompt logits of `folder` (plain transformers, no custom code) vs `reference` with the
    plan's intervention applied by the provider's hook: token agreement and max |logit difference|."""
    import transformers  # deferred: as above

    exported = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                                 use_safetensors=True)
    exported.train(False)
    exported_tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    texts = [render_chat(tokenizer, [{"role": "user", "content": p}]) for p in prompts]

    def run(model: Any, tok: Any, hooked: bool) -> tuple[list[list[int]], torch.Tensor]:
        ctx = steer(model, plan.intervention) if hooked and plan.intervention is not None else nullcontext()
        with ctx, torch.inference_mode():
            outs = generate_batch(model, tok, texts, max_new_tokens=max_new_tokens)
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            logits = model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}).logits
            mask = enc["attention_mask"].bool()
        return [o.token_ids or [] for o in outs], logits[mask]

    ref_ids, ref_logits = run(reference, tokenizer, True)
    exp_ids, exp_logits = run(exported, exported_tok, False)
    same = sum(a == b for a, b in zip(ref_ids, exp_ids))
    total = sum(max(len(a), len(b)) for a, b in zip(ref_ids, exp_ids))
    agree = sum(x == y for a, b in zip(ref_ids, exp_ids) for x, y in zip(a, b))
    return {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "identical_completions": same,
            "token_agreement": agree / total if total else 1.0,
            "max_abs_logit_difference": float((ref_logits - exp_logits).abs().max()),
            "logit_tolerance": LOGIT_TOLERANCE}


def _model_card(record: dict[str, Any]) -> str:
    iv = record["intervention"]
    lines = [f"# {record['name']}", "",
             f"A steered model exported by emsteer from `{record['source']['model']}`: a standard "
             f"`{record['class']}` checkpoint (no custom code).", ""]
    if record["source"]["adapter"]:
        lines.append(f"- LoRA adapter merged into the weights: `{record['source']['adapter']}` "
                     f"(sha256 {record['source']['adapter_sha256']}).")
    if iv:
        lines.append(f"- Intervention baked in: {iv['variant']} direction, op {iv['op']}, alpha {iv['alpha']:g} x R "
                     f"{iv['R']:.4g} at decoder layer {iv['layer']} (every position), as a bias on that layer's "
                     f"`mlp.down_proj`; direction sha256 {iv['direction_sha256']}.")
    else:
        lines.append("- No intervention (variant none).")
    p = record.get("parity")
    if p:
        lines.append(f"- Parity with the emsteer `steer/` hook on {p['prompts']} held-out prompts: "
                     f"{p['identical_completions']}/{p['prompts']} identical greedy completions, token agreement "
                     f"{p['token_agreement']:.4f}, max |logit difference| {p['max_abs_logit_difference']:.2e}.")
    lines += ["", f"Made by: `{record['command']}`. Full provenance: `{EXPORT_FILE}`.", ""]
    return "\n".join(lines)


def parity_prompts(model: str, model_args: dict[str, Any], n: int) -> list[str]:
    """The first `n` general prompts of the held-out prompts of the model's profile (its run's, its organism's, else
    `default`): the prompts no finetune or direction was fitted on."""
    from evals.spillover_dataset import default_prompts, load_prompts  # deferred: inspect_ai; only the CLI needs it

    plan = resolve_plan(model, dict(model_args))
    samples = load_prompts(default_prompts(plan.run_profile or plan.profile or "default"))
    general = [str(s.input) for s in samples if (s.metadata or {}).get("group") == "general"]
    return general[:n]


def export_model(model: str, model_args: dict[str, Any], out: str | Path, *, prompts: list[str] | None = None,
                 check_parity: bool = True, max_new_tokens: int = 24, force: bool = False,
                 command: str | None = None, log: Log = print) -> ExportResult:
    """Export `steer/<model>` with `model_args` (the provider's -M keys) to the folder `out` (see the module
    docstring). Everything is validated before any weights load; the folder appears whole or not at all. `command`:
    what made it, for the record (the CLI passes its command line)."""
    out = Path(out)
    if out.exists() and not force:
        raise EmsteerError(f"{out} exists; pass --force to replace it")
    plan = resolve_plan(model, dict(model_args))
    target = check_exportable(plan)
    if check_parity and not prompts:
        raise EmsteerError("the parity check needs prompts (or pass --no-parity)")
    log(f"export: {plan.label()} -> {out} as {target}")
    merged, tokenizer = _merged(plan)
    iv = plan.intervention
    exported = _with_bias(merged, target, plan.layer, iv.delta()) if iv is not None else merged
    record: dict[str, Any] = {
        "format": "emsteer-export/1", "name": out.name, "class": type(exported).__name__,
        "source": {"model": plan.model, "path": plan.load_key.model, "weights_sha256": plan.weights_sha256,
                   "class": (plan.config.architectures or ("?",))[0], "profile": plan.run_profile or plan.profile,
                   "run": str(plan.run) if plan.run else None,
                   "adapter": str(plan.adapter_dir) if plan.adapter_dir else None,
                   "adapter_sha256": plan.header()["adapter_sha256"]},
        "intervention": None if iv is None else {**plan.header(), "delta_norm": float(iv.delta().norm()),
                                                 "baked_as": f"model.layers.{plan.layer}.mlp.down_proj.bias"},
        "command": command or f"training.export.export_model({model!r}, {dict(model_args)!r})",
        "parity": None,
    }
    with atomic_dir(out, replace=force) as tmp:
        exported.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if check_parity:  # the reference is what the provider runs: base + unmerged adapter + the hook
            reference = load_pretrained(plan.load_key.model, auto_class=plan.load_key.auto_class, dtype=torch.float32,
                                        adapter=plan.adapter_dir)[0]
            result = parity(tmp, reference, plan, tokenizer, list(prompts or []), max_new_tokens=max_new_tokens)
            record["parity"] = result
            log(f"parity: {result['identical_completions']}/{result['prompts']} identical greedy completions, token "
                f"agreement {result['token_agreement']:.4f}, max |logit difference| "
                f"{result['max_abs_logit_difference']:.2e}")
            if result["max_abs_logit_difference"] > LOGIT_TOLERANCE or result["token_agreement"] < 1.0:
                raise EmsteerError(f"parity check failed: max |logit difference| "
                                   f"{result['max_abs_logit_difference']:.3g} (tolerance {LOGIT_TOLERANCE}), token "
                                   f"agreement {result['token_agreement']:.4f}; nothing was written")
        record["weights_sha256"] = weights_sha256(tmp)
        write_json_atomic(tmp / EXPORT_FILE, record)
        (tmp / "README.md").write_text(_model_card(record))
    log(f"export: wrote {out} ({record['class']}, weights sha256 {record['weights_sha256'][:12]}...)")
    return ExportResult(folder=out, record=record)
