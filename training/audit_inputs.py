"""What an audit reads, checked before any weights load: the audited and reference models (micro presets or
local folders), the direction file (family, width, base weights, layer), the held-out prompts, and the
activations one forward pass gives at their last token.

What is measured: the output of the direction's decoder layer (before the final norm, where the directions
are extracted) at the LAST token of each chat-templated prompt (`last-prompt` pooling: the generation prompt,
where the model settles how to answer), on the organisms' held-out general (non-coding) prompts. One forward
pass per batch of prompts, no generation: response-mean pooling would need each model's own responses, and
teacher-forcing fixed texts would measure how a model reads text it did not write. `last-prompt` separates
insecure finetunes from their base at least as well as `response-mean` on the extraction prompts (see
`pooling_comparison` in RUN/directions/<family>/summary.json).

Reference and audited prompts are disjoint: the held-out general prompts are split by position into a
reference half (even positions: the BASE model's projections there are the reference distribution) and an
audit half (odd positions: the audited checkpoint's projections). Auditing the base itself is therefore not
trivially a zero shift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from interventions.directions import Direction, load_direction
from interventions.errors import EmsteerError
from interventions.model_ref import ModelRef, resolve_model_ref
from interventions.paths import FAMILIES
from interventions.run_layout import transfer_command, transferred_direction_path
from training.activations import collect_pooled
from training.audit_scoring import AUDIT_POOLING, MIN_REFERENCE


def resolve_model(model: str, profile: str) -> ModelRef:
    """A micro preset (`micro-qwen`, the organism of `profile`) or a local model folder, resolved by `model_ref`
    and hashed (no weights loaded); a `-steered` preset or a hub id is a one-line error."""
    ref = resolve_model_ref(model, profile)
    if ref.preset is not None and ref.preset.steered:
        raise EmsteerError(f"--model {model}: audit a base preset (without -steered) and pass --adapter")
    if ref.kind == "hub":
        what = f"preset {model} resolves to the hub id {ref.path}" if ref.preset else f"{model} is a hub id"
        raise EmsteerError(f"{what}; audit needs local weights: pass the downloaded model folder as --model")
    if ref.weights_sha256 is None:  # hashed here, so a folder without safetensors weights fails before any load
        raise EmsteerError(f"{model}: no local weights to audit")
    return ref


def infer_run(path: Path) -> Path | None:
    """The run directory a direction file lies in (RUN/directions/... or RUN/transfer/...), if any."""
    for folder in Path(path).resolve().parents:
        if folder.name in ("directions", "transfer", "audit") and (folder.parent / "run.json").is_file():
            return folder.parent
    return None


def check_direction(path: Path, audited: ModelRef, reference: ModelRef, run: Path | None) -> Direction:
    """Load the direction file and check it belongs to the reference model (same model id, same base weights)
    and has the audited model's width; a direction of another family names the transfer that maps it."""
    d = load_direction(path)
    made_for = d.model_id
    if made_for is not None and made_for != reference.model_id:
        donor = made_for[len("micro-"):] if made_for.startswith("micro-") else None
        receiver = reference.family
        if donor in FAMILIES and receiver is not None and run is not None:
            mapped = transferred_direction_path(run, donor, receiver)
            hint = (f"audit with the mapped direction {mapped}" if mapped.is_file()
                    else f"map it first with `{transfer_command(run, donor, receiver)}` and audit with {mapped}")
        else:
            hint = ("map it into this model's space with `emsteer transfer --run RUN --src DONOR --tgt RECEIVER` and "
                    "audit with RUN/transfer/<donor>_to_<receiver>/direction.safetensors")
        raise EmsteerError(f"{path} is a direction of {made_for} (width {d.width}), not of {reference.model_id} "
                           f"(width {reference.d_model}); {hint}")
    for spec, what in ((audited, "audited checkpoint"), (reference, "reference model")):
        if d.width != spec.d_model:
            raise EmsteerError(f"{path}: direction width {d.width} does not match the {what}'s hidden size "
                               f"{spec.d_model} ({spec.model_id})")
    recorded = d.metadata.get("weights_sha256")
    if recorded is not None and recorded != reference.weights_sha256:
        raise EmsteerError(f"{path} was made from other weights of {reference.model_id} (weights sha256 "
                           f"{recorded[:12]}..., the model now has {reference.weights_sha256[:12]}...); re-extract it")
    if d.layer is None:
        raise EmsteerError(f"{path} records no layer; audit needs the layer the direction was measured at")
    if not 0 <= d.layer < audited.n_layers:
        raise EmsteerError(f"{path} records layer {d.layer}, out of range for {audited.n_layers} decoder layers")
    return d


def audit_prompts(profile: str) -> tuple[list[str], list[str]]:
    """(reference prompts, audited prompts): the held-out general prompts of the profile's corpus, split by
    position (even -> reference, odd -> audited)."""
    from training.organisms import ensure_corpus  # deferred: pulls in transformers (~4 s at CLI start)
    from training.profiles import load_profile  # deferred: with the corpus, needed only once the inputs are valid

    general = [h["prompt"] for h in ensure_corpus(load_profile(profile)).heldout if h["group"] == "general"]
    if len(general) < 2 * MIN_REFERENCE:
        raise EmsteerError(f"profile {profile} has only {len(general)} held-out general prompts; need {2 * MIN_REFERENCE}")
    return general[0::2], general[1::2]


def last_prompt_acts(lm: Any, prompts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """[n, n_layers, d] outputs of every decoder layer at each prompt's last token (one forward per batch)."""
    return collect_pooled(lm, list(prompts), (AUDIT_POOLING,), batch_size=batch_size).acts[AUDIT_POOLING]


__all__ = ["audit_prompts", "check_direction", "infer_run", "last_prompt_acts", "resolve_model"]
