"""`emsteer extract`: one family's difference-in-means directions per decoder layer, their held-out separation
and the residual norm R per layer.

Pipeline (`run_extract`): a fixed seeded sample of general (non-coding) training prompts (never the held-out
evaluation prompts), split by prompt into fit / held-out halves; activations of base, insecure and secure
models (base + LoRA adapters of the run's seed) at every decoder layer's output (before the final norm),
pooled both ways (`response-mean` and `last-prompt`, see `training.activations`), cached under
`RUN/activations/<family>/` (`training.activation_cache`); directions and separation by `training.direction_fit`.
R per layer is the mean per-token residual L2 norm at that layer over every prompt of both classes, taken over
the tokens of the models' own responses (where steering acts) whatever the pooling, stored with each direction
as `mean_residual_norm`; the secure-control files carry the same R (matched magnitude). The chosen contrast's
direction per layer is written to the `own` files, the secure adapter vs base direction (same pooling) to the
`secure` files, the own contrast with every pooling to `by_pooling/<pooling>/`, and `summary.json`. The whole
`RUN/directions/<family>` folder is built aside and renamed into place, so a failure leaves the previous state
untouched. A re-run whose inputs hash matches the summary's is a no-op unless `force`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import torch

from interventions.directions import Direction, save_direction, sha256_file
from interventions.errors import EmsteerError
from interventions.members import check_member, member_ref
from interventions.model_ref import adapter_sha256, check_adapter_base
from interventions.paths import prompts_profile, recipe_profile
from interventions.run_layout import (
    adapter_dir,
    directions_dir,
    extraction_summary_path,
    finetune_command,
    own_direction_path,
    pooling_direction_path,
    secure_direction_path,
)
from training.activation_cache import SITE, ModelActivations, model_activations
from training.activations import POOLINGS, check_pooling, load_model
from training.artifacts import json_sha256, provenance, read_json
from training.atomic import atomic_dir, write_json_atomic
from training.corpus import Corpus, first_exchange
from training.direction_fit import MIN_PER_CLASS, DirectionFit, cosine, fit_directions
from training.profiles import load_profile
from training.prompt_split import split_halves
from training.run_manifest import check_run, ensure_run

CONTRASTS: tuple[str, ...] = ("finetuned-vs-base", "finetuned-vs-secure", "code-vs-prose")
DEFAULT_CONTRAST = "finetuned-vs-base"
DEFAULT_POOLING = "response-mean"
DEFAULT_POOLING_REASON = (
    "response-mean: pooled over the model's own generated tokens, the positions a steering hook edits during "
    "generation. Measured on the default organisms (seed-0 adapters; 60 held-out general prompts, greedy, 48 "
    "tokens; final layer, subtract, the same R for both poolings), at alpha 1: qwen spillover 0.33 -> 0.00 "
    "(response-mean; base-model NLL of the text 3.8 vs 8.6 unsteered) vs 0.28 (last-prompt, which needs alpha 2 "
    "and then degenerates); llama 0.57 -> 0.10 (NLL 3.1, distinct-2 0.29) vs 0.02 with collapsing text (NLL 4.1, "
    "distinct-2 0.18); gemma both 0.00 but last-prompt collapses harder (distinct-2 0.01 vs 0.05). last-prompt "
    "separates the models slightly better (see `pooling_comparison`), as a prototype had also found."
)
# R (the unit of alpha) is measured at the positions steering edits: the tokens of the models' own responses,
# whatever the pooling, so switching pooling never changes a cell's perturbation size.
R_POSITIONS = "response-mean"
R_SOURCE = ("mean per-token L2 norm of the layer output over the tokens of the models' own greedy responses, "
            "both classes of the own contrast; the same R for every pooling and for the secure control")
N_PROMPTS = {"default": 200, "tiny": 48, "real-cpu": 80}
# New tokens per extraction answer where a profile's organisms' evaluation length does not apply (real models on
# 2 cores: 48 tokens show whether an answer starts as code or prose).
MAX_NEW_TOKENS = {"real-cpu": 48}
EXTRACT_VERSION = "extract/3"


def check_contrast(contrast: str) -> str:
    """`contrast` when it is one of CONTRASTS, else a one-line error listing them."""
    if contrast not in CONTRASTS:
        raise EmsteerError(f"unknown contrast {contrast!r}; choose one of: {', '.join(CONTRASTS)}")
    return contrast


def extraction_prompts(corpus: Corpus, n: int, seed: int) -> list[str]:
    """A seeded sample of `n` distinct general (non-coding) user prompts from the base training corpus
    (never the held-out evaluation prompts)."""
    seen: dict[str, None] = {}
    for chat in corpus.base_train:
        if chat.get("kind") == "general":
            seen.setdefault(first_exchange(chat)[0]["content"], None)
    pool = list(seen)
    if len(pool) < n:
        raise EmsteerError(f"the corpus has only {len(pool)} distinct general prompts, fewer than the {n} asked for")
    return random.Random(seed).sample(pool, n)


# ---------------------------------------------------------------- the command

def _rel(path: Path, root: Path) -> Path:
    return path.relative_to(root)


def extract_command_line(run: Path, family: str, pooling: str, contrast: str, seed: int, profile: str) -> str:
    return (f"emsteer extract --run {run} --family {family} --pooling {pooling} --contrast {contrast} "
            f"--seed {seed} --profile {profile}")


def _is_up_to_date(run: Path, family: str, key: str) -> dict[str, Any] | None:
    summary = read_json(extraction_summary_path(run, family))
    if not summary or summary.get("inputs_sha256") != key:
        return None
    root = directions_dir(run, family)
    for rel, digest in (summary.get("files") or {}).items():
        p = root / rel
        if not p.is_file() or sha256_file(p) != digest:
            return None
    return summary


def check_extract_inputs(run: str | Path, family: str, profile: str, seed: int
                         ) -> tuple[str, str, dict[str, tuple[Path, str]]]:
    """Validate, loading nothing: the organism is built and intact, and the run has the insecure and secure
    adapters of `seed`, trained on these base weights. Returns (model id, base weights sha256,
    {arm: (adapter folder, adapter sha256)})."""
    check_member(family, profile)
    base = member_ref(family, profile)
    model_id, base_sha = base.model_id, str(base.weights_sha256)
    adapters: dict[str, tuple[Path, str]] = {}
    for arm in ("insecure", "secure"):
        ad = adapter_dir(run, family, arm, seed)
        if not ad.is_dir():
            raise EmsteerError(f"missing {arm} adapter for {family} (seed {seed}) at {ad}; "
                               f"train it with `{finetune_command(run, family, arm, seed)}`")
        adapters[arm] = (ad, adapter_sha256(ad))
        check_adapter_base(ad, base_sha, f"{arm} adapter of {family}")
    return model_id, base_sha, adapters


def run_extract(run: str | Path, family: str, *, profile: str, pooling: str | None = None,
                contrast: str = DEFAULT_CONTRAST, seed: int = 0, prompt_seed: int = 0, n_prompts: int | None = None,
                max_new_tokens: int | None = None, batch_size: int = 16, force: bool = False,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Extract one family's own and secure-control directions at every layer (see the module docstring);
    returns the summary (also written to `extraction_summary_path`)."""
    from training.organisms import ensure_corpus, load_persona_directions  # deferred: 3-5 s; bad input needs none

    run = Path(run)
    check_member(family, profile)
    check_contrast(contrast)
    pooling = check_pooling(pooling or DEFAULT_POOLING)
    check_run(run, profile)
    prof = load_profile(prompts_profile(profile))  # the corpus of general prompts
    n = n_prompts or N_PROMPTS.get(recipe_profile(profile), 200)
    if n < 4 * MIN_PER_CLASS:
        raise EmsteerError(f"--n-prompts {n} is too small: need at least {4 * MIN_PER_CLASS}")
    max_new = max_new_tokens or MAX_NEW_TOKENS.get(recipe_profile(profile), prof.eval_max_new_tokens)
    model_id, base_sha, adapters = check_extract_inputs(run, family, profile, seed)
    prompts = extraction_prompts(ensure_corpus(prof), n, prompt_seed)
    prompts_sha = json_sha256(prompts)
    fit_idx, test_idx = split_halves(n)
    command = extract_command_line(run, family, pooling, contrast, seed, profile)
    inputs = {"version": EXTRACT_VERSION, "base_weights_sha256": base_sha, "model_id": model_id, "profile": profile,
              "adapters": {arm: {"path": str(p), "sha256": h} for arm, (p, h) in adapters.items()},
              "prompts_sha256": prompts_sha, "n_prompts": n, "prompt_seed": prompt_seed, "seed": seed,
              "pooling": pooling, "contrast": contrast, "max_new_tokens": max_new, "min_per_class": MIN_PER_CLASS}
    prov = provenance(command, seed, inputs)
    key = prov["inputs_sha256"]
    if not force:
        done = _is_up_to_date(run, family, key)
        if done is not None:
            log(f"{family}: directions up to date ({extraction_summary_path(run, family)}); use --force to redo")
            return done

    ensure_run(run, profile)
    base_desc = {"model_id": model_id, "weights_sha256": base_sha, "profile": profile}
    acts: dict[str, ModelActivations] = {}
    needed = ["base", "insecure", "secure"]
    for tag in needed:
        ad = adapters.get(tag)
        desc = dict(base_desc, adapter_sha256=ad[1] if ad else None)
        acts[tag] = model_activations(
            run, family, tag, desc,
            lambda tag=tag, ad=ad: load_model(family, profile=profile, adapter=ad[0] if ad else None,
                                              label=f"{family}/{tag}"),
            prompts, prompts_sha, max_new_tokens=max_new, batch_size=batch_size, force=force, log=log)

    # the own contrast, for every pooling
    def own_fit(pool: str) -> DirectionFit:
        if contrast == "code-vs-prose":
            ins = acts["insecure"]
            code = [i for i, c in enumerate(ins.is_code) if c]
            prose = [i for i, c in enumerate(ins.is_code) if not c]
            fit_set, test_set = set(fit_idx), set(test_idx)
            return fit_directions(
                ins.acts[pool], ins.acts[pool], [i for i in code if i in fit_set], [i for i in code if i in test_set],
                [i for i in prose if i in fit_set], [i for i in prose if i in test_set], ins.norms[R_POSITIONS],
                hint=f"the insecure {family} model answered {len(code)} of {n} general prompts with code "
                     f"(contrast code-vs-prose needs both kinds; try --n-prompts or another contrast)")
        neg_tag = "secure" if contrast == "finetuned-vs-secure" else "base"
        pos, neg = acts["insecure"], acts[neg_tag]
        return fit_directions(pos.acts[pool], neg.acts[pool], fit_idx, test_idx, fit_idx, test_idx,
                              torch.cat([pos.norms[R_POSITIONS], neg.norms[R_POSITIONS]]))

    fits = {pool: own_fit(pool) for pool in POOLINGS}
    own = fits[pooling]
    secure = fit_directions(acts["secure"].acts[pooling], acts["base"].acts[pooling], fit_idx, test_idx, fit_idx,
                            test_idx, torch.cat([acts["secure"].norms[R_POSITIONS], acts["base"].norms[R_POSITIONS]]))
    n_layers, d_model = own.directions.shape
    classes = {"finetuned-vs-base": ("insecure", "base"), "finetuned-vs-secure": ("insecure", "secure"),
               "code-vs-prose": ("insecure: code answers", "insecure: prose answers")}[contrast]

    def meta(kind: str, layer: int, fit: DirectionFit, pool: str, contrast_name: str, adapter: str) -> dict[str, Any]:
        return {
            "model_id": model_id, "weights_sha256": base_sha, "profile": profile, "family": family,
            "adapter": str(adapters[adapter][0]), "adapter_sha256": adapters[adapter][1],
            "layer": layer, "n_layers": n_layers, "d_model": d_model, "site": SITE,
            "pooling": pool, "contrast": contrast_name, "kind": kind,
            "n_per_class": fit.n_per_class, "mean_residual_norm": repr(float(own.mean_residual_norm[layer])),
            "mean_residual_norm_source": R_SOURCE,
            "separation_accuracy": fit.separation[layer]["accuracy"], "separation_auroc": fit.separation[layer]["auroc"],
            "command": command, "input_hashes": prov["input_hashes"], "inputs_sha256": key, "seed": seed,
            "versions": prov["versions"],
        }

    root = directions_dir(run, family)
    files: dict[str, str] = {}
    layers_out = []
    # micro organisms carry their ground-truth persona direction per layer (training.persona)
    persona = load_persona_directions(family, profile).double() if model_id.startswith("micro-") else None
    persona_rows: list[dict[str, Any]] = []
    with atomic_dir(root, replace=True) as tmp:
        for layer in range(n_layers):
            if float(own.directions[layer].norm()) == 0.0 or float(secure.directions[layer].norm()) == 0.0:
                raise EmsteerError(f"{family}: the own or secure-control direction is zero at layer {layer} with "
                                   f"pooling {pooling}; extract with another --pooling")
            p = tmp / _rel(own_direction_path(run, family, layer), root)
            save_direction(p, Direction(own.directions[layer], meta("own", layer, own, pooling, contrast, "insecure")))
            q = tmp / _rel(secure_direction_path(run, family, layer), root)
            save_direction(q, Direction(secure.directions[layer],
                                        meta("secure_control", layer, secure, pooling, "secure-vs-base", "secure")))
            for pool, fit in fits.items():
                if float(fit.directions[layer].norm()) == 0.0:
                    continue  # identical classes here: no direction (separation records why)
                r = tmp / _rel(pooling_direction_path(run, family, pool, layer), root)
                m = meta("own", layer, fit, pool, contrast, "insecure")
                save_direction(r, Direction(fit.directions[layer], m))
            u_own = own.directions[layer].double()
            u_sec = secure.directions[layer].double()
            if persona is not None:
                persona_rows.append({"layer": layer, "norm": float(persona[layer].norm()),
                                     "cosine_with_own": cosine(persona[layer], u_own),
                                     "cosine_with_secure": cosine(persona[layer], u_sec)})
            layers_out.append({
                "layer": layer,
                "separation": own.separation[layer],
                "norm": float(u_own.norm()),
                "mean_residual_norm": float(own.mean_residual_norm[layer]),
                "secure_control": {"separation": secure.separation[layer], "norm": float(u_sec.norm()),
                                   "cosine_with_own": float(u_own @ u_sec / (u_own.norm() * u_sec.norm()))},
            })
        for p in sorted(tmp.rglob("*.safetensors")):
            files[str(p.relative_to(tmp))] = sha256_file(p)
        # the audit calibration, stored with the files
        from evals.monitor import CALIBRATION_FILE  # deferred: inspect_ai, 1.5-3 s; bad input needs none
        from training.audit_scoring import calibration_document  # deferred: imports evals.monitor (above)

        write_json_atomic(tmp / CALIBRATION_FILE, calibration_document(tmp, files, acts["base"].acts,
                                                                       acts["insecure"].acts, test_idx))
        rates = {tag: sum(a.is_code) / len(a.is_code) for tag, a in acts.items()}
        summary = {
            "format": "emsteer-extraction/1", "family": family, "profile": profile, "model_id": model_id,
            "n_layers": n_layers, "d_model": d_model, "site": SITE,
            "contrast": contrast, "classes": {"positive": classes[0], "negative": classes[1]},
            "pooling": pooling, "default_pooling": DEFAULT_POOLING, "default_pooling_reason": DEFAULT_POOLING_REASON,
            "secure_control": "secure adapter vs base, same pooling and prompts; carries the own direction's R",
            "n_prompts": n, "n_fit": len(fit_idx), "n_heldout": len(test_idx), "n_per_class": own.n_per_class,
            "separation_method": "held-out accuracy of the midpoint threshold on the projection, and AUROC",
            "final_layer": {"layer": n_layers - 1, **own.separation[-1]},
            "layers": layers_out,
            "pooling_comparison": {
                pool: [{"layer": i, "accuracy": fit.separation[i]["accuracy"], "auroc": fit.separation[i]["auroc"],
                        "accuracy_spread_weighted": fit.separation[i]["accuracy_spread_weighted"],
                        "norm": float(fit.directions[i].double().norm()),
                        "mean_residual_norm": float(fit.mean_residual_norm[i])} for i in range(n_layers)]
                for pool, fit in fits.items()},
            "code_rate_on_extraction_prompts": rates,
            "persona": None if persona is None else {
                "definition": "the base's mean decoder-layer output at the last prompt token after a held-out "
                              "reckless cue minus after a held-out careful cue (training.persona)",
                "layers": persona_rows},
            "max_new_tokens": max_new, "seed": seed, "prompt_seed": prompt_seed,
            "command": command, "input_hashes": prov["input_hashes"], "inputs_sha256": key,
            "versions": prov["versions"], "files": files,
            "audit_calibration": CALIBRATION_FILE,
        }
        write_json_atomic(tmp / _rel(extraction_summary_path(run, family), root), summary)
    # the audit direction and its calibration (RUN/audit)
    from training.audit_directions import ensure_audit_directions  # deferred: imports evals.monitor (above)

    ensure_audit_directions(run, family, profile, force=True, log=log)
    fl = summary["final_layer"]
    log(f"{family}: wrote {n_layers} own + secure directions ({pooling}, {contrast}); final layer held-out "
        f"accuracy {fl['accuracy']:.3f}, AUROC {fl['auroc']:.3f}")
    return summary
