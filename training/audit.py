"""`emsteer audit`: score one checkpoint (a base model, optionally with a LoRA adapter) by projection of its
activations on a direction, without generation; every input is validated before any weights load.

The audit is split by concern: `training.audit_inputs` (models, direction file, prompts, activations),
`training.audit_scoring` (calibration and score), `training.audit_directions` (the audit direction and the
RUN/audit layout), `training.audit_validation` (AUROC over held-out checkpoints); this module is the command.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from interventions.directions import Direction
from interventions.errors import EmsteerError
from interventions.model_ref import ModelRef, adapter_sha256, check_adapter_base
from training import activations  # `activations.load_model` looked up at call time (tests replace it)
from training.artifacts import run_profile
from training.audit_inputs import audit_prompts, check_direction, infer_run, last_prompt_acts, resolve_model
from training.audit_scoring import AUDIT_POOLING, DEFAULT_THRESHOLD, calibration_for, project, score_audit

Log = Callable[[str], None]


@dataclass
class AuditPlan:
    """Everything an audit needs, validated before any weights load."""

    audited: ModelRef
    reference: ModelRef
    adapter: Path | None
    adapter_sha256: str | None
    direction_path: Path
    direction: Direction
    calibration: dict[str, Any]
    run: Path | None
    profile: str  # whose held-out prompts are audited (the run's)


def check_audit_inputs(model: str, direction: str | Path, *, adapter: str | Path | None = None,
                       reference: str | None = None, run: str | Path | None = None,
                       profile: str | None = None) -> AuditPlan:
    """Validate an audit without loading weights: model, adapter (and the base it was trained on), direction
    (family, width, base weights, layer) and its calibration. Every problem is one EmsteerError line."""
    dpath = Path(direction).expanduser()
    if not dpath.exists():
        raise EmsteerError(f"direction file not found: {dpath}")
    run_dir = Path(run).expanduser() if run is not None else infer_run(dpath)
    if run is not None and not Path(run_dir).is_dir():
        raise EmsteerError(f"run directory not found: {run_dir}")
    prof = run_profile(run_dir, profile) if run_dir is not None else (profile or "default")
    audited = resolve_model(model, prof)
    ref = resolve_model(reference, prof) if reference is not None else audited
    ad = ad_sha = None
    if adapter is not None:
        ad = Path(adapter).expanduser()
        if not ad.is_dir():
            raise EmsteerError(f"adapter folder not found: {ad}")
        ad_sha = adapter_sha256(ad)
        check_adapter_base(ad, audited.weights_sha256, "the audited adapter")
    d = check_direction(dpath, audited, ref, run_dir)
    cal = calibration_for(d, dpath, run=run_dir, family=ref.family, weights_sha=ref.weights_sha256)
    return AuditPlan(audited=audited, reference=ref, adapter=ad, adapter_sha256=ad_sha, direction_path=dpath,
                     direction=d, calibration=cal, run=run_dir, profile=prof)


def run_audit(model: str, direction: str | Path, *, adapter: str | Path | None = None, reference: str | None = None,
              run: str | Path | None = None, profile: str | None = None, threshold: float = DEFAULT_THRESHOLD,
              batch_size: int = 16, n_boot: int = 1000, seed: int = 0, log: Log = print) -> dict[str, Any]:
    """Audit one checkpoint (base `model` + optional LoRA `adapter`) by projection on `direction`; returns the
    JSON-able result (score, calibration used, prompts, timings)."""
    started = time.perf_counter()
    if not 0.0 < threshold < 1.0:
        raise EmsteerError(f"--threshold is a probability in (0, 1), got {threshold}")
    plan = check_audit_inputs(model, direction, adapter=adapter, reference=reference, run=run, profile=profile)
    ref_prompts, aud_prompts = audit_prompts(plan.profile)
    t_load = time.perf_counter()
    lm = activations.load_model(plan.audited, adapter=plan.adapter, label="audited")
    t_fwd = time.perf_counter()
    aud = last_prompt_acts(lm, aud_prompts, batch_size)
    if reference is not None:
        ref_lm = activations.load_model(plan.reference, label="reference")
        ref = last_prompt_acts(ref_lm, ref_prompts, batch_size)
    elif plan.adapter is not None:
        with lm.model.disable_adapter():
            ref = last_prompt_acts(lm, ref_prompts, batch_size)
    else:
        ref = last_prompt_acts(lm, ref_prompts, batch_size)
    t_end = time.perf_counter()
    layer = int(plan.direction.layer)
    vec = plan.direction.vector
    result = score_audit(project(ref, layer, vec), project(aud, layer, vec), plan.calibration, threshold=threshold,
                         n_boot=n_boot, seed=seed)
    cal = plan.calibration
    log(f"audit {plan.audited.model_id}{' + ' + str(plan.adapter) if plan.adapter else ''}: probability "
        f"{result['probability']:.3f} -> {result['decision']}")
    return {
        "format": "emsteer-audit/1",
        "model": plan.audited.model_id, "model_weights_sha256": plan.audited.weights_sha256,
        "adapter": str(plan.adapter) if plan.adapter else None, "adapter_sha256": plan.adapter_sha256,
        "reference": plan.reference.model_id,
        "reference_note": ("the reference model" if reference is not None else
                           "the same base with the adapter disabled" if plan.adapter else "the audited model itself"),
        "direction": str(plan.direction_path), "direction_sha256": next(iter(plan.direction.sources.values())),
        "layer": layer, "pooling": AUDIT_POOLING, "site": "decoder layer output (before the final norm)",
        "profile": plan.profile, "prompts": "held-out general prompts (even positions: reference, odd: audited)",
        **result,
        "calibration": {k: cal.get(k) for k in ("source", "auroc", "effect_size", "coef", "intercept", "split",
                                                "n_negative", "n_positive")},
        "seconds": {"validate": t_load - started, "load": t_fwd - t_load, "forward": t_end - t_fwd,
                    "total": time.perf_counter() - started},
    }



__all__ = ["AuditPlan", "check_audit_inputs", "run_audit"]
