"""The audit direction of a family and where audit artifacts live (RUN/audit/<family>): made from the
extraction's cached activations when the directions are extracted, with its calibration stored beside it.

Why a direction of its own (`ensure_audit_directions`, RUN/audit/<family>/directions/layer_<i>.safetensors): on
the micro organisms the insecure-vs-base direction moves SECURE finetunes even further than insecure ones (both
learnt "answer with security code"; measured on default qwen: effect size 42-47 base sd for insecure checkpoints,
75-78 for secure ones, so AUROC over checkpoints 0.25). The audit direction keeps only what is specific to the
insecure arm: the insecure-vs-base difference in means (last-prompt pooling, fit half) with its component along
the secure-vs-base difference in means removed. Its calibration is stored beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from evals.monitor import CALIBRATION_FILE
from interventions.directions import Direction, save_direction, sha256_file, unit
from interventions.errors import EmsteerError
from interventions.members import member_ref
from interventions.run_layout import activations_path, directions_dir, extract_command, extraction_summary_path
from training.artifacts import json_sha256, read_json, versions
from training.atomic import atomic_dir, write_json_atomic
from training.audit_scoring import AUDIT_POOLING, cached_activations, calibration_document
from training.prompt_split import split_halves

AUDIT_VERSION = "audit-direction/1"
AUDIT_CONTRAST = "insecure-vs-base with its secure-vs-base component removed"

Log = Callable[[str], None]


def audit_dir(run: str | Path, family: str) -> Path:
    """`RUN/audit/<family>`: audit directions, their calibration and the validation result."""
    return directions_dir(run, family).parent.parent / "audit" / family


def audit_direction_path(run: str | Path, family: str, layer: int) -> Path:
    """`RUN/audit/<family>/directions/layer_<i>.safetensors`: the audit direction at one layer."""
    return audit_dir(run, family) / "directions" / f"layer_{int(layer)}.safetensors"


def audit_validation_path(run: str | Path, family: str) -> Path:
    """`RUN/audit/<family>/validation.json`: the result of `validate_audit`."""
    return audit_dir(run, family) / "validation.json"


def remove_component(vector: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """`vector` minus its projection on `axis` (float64 maths, fp32 result)."""
    v, a = vector.double(), unit(axis.double())
    return (v - (v @ a) * a).float()


def secure_axis(secure: torch.Tensor, base: torch.Tensor, layer: int, fit: Sequence[int]) -> torch.Tensor:
    """Secure-vs-base difference in means of pooled activations [n, n_layers, d] at `layer` over rows `fit`."""
    idx = list(fit)
    return (secure[idx, layer].double().mean(0) - base[idx, layer].double().mean(0)).float()


def ensure_audit_directions(run: str | Path, family: str, profile: str, *, force: bool = False,
                            log: Log = print) -> dict[str, Any]:
    """Write the audit direction of every layer and its calibration from the run's cached extraction activations
    (base, insecure, secure; fit half for the directions, held-out half for the calibration); a no-op when the
    inputs are unchanged. Returns the manifest (RUN/audit/<family>/directions/manifest.json)."""
    run = Path(run)
    summary = read_json(extraction_summary_path(run, family))
    if summary is None:
        raise EmsteerError(f"no directions for {family} in {run}; run `{extract_command(run, family)}`")
    spec = member_ref(family, profile)
    files_in = {t: activations_path(run, family, t) for t in ("base", "insecure", "secure")}
    for t, p in files_in.items():
        if not p.is_file():
            raise EmsteerError(f"missing cached {t} activations {p} (the audit direction is made from them); "
                               f"run `{extract_command(run, family)} --force`")
    inputs = {"version": AUDIT_VERSION, "pooling": AUDIT_POOLING, "weights_sha256": spec.weights_sha256,
              "extraction_inputs_sha256": summary.get("inputs_sha256"),
              "activations_sha256": {t: sha256_file(p) for t, p in files_in.items()}}
    key = json_sha256(inputs)
    out = audit_dir(run, family) / "directions"
    old = read_json(out / "manifest.json")
    if old and old.get("inputs_sha256") == key and not force and all(
            (out / f).is_file() and sha256_file(out / f) == h for f, h in old.get("files", {}).items()):
        return old
    acts = {t: cached_activations(run, family, t, spec.weights_sha256) for t in files_in}
    n = int(acts["base"][AUDIT_POOLING].shape[0])
    fit, held = split_halves(n)
    layers = {int(x["layer"]): x for x in summary.get("layers", [])}
    with atomic_dir(out, replace=True) as tmp:
        files: dict[str, str] = {}
        for layer in range(spec.n_layers):
            own = secure_axis(acts["insecure"][AUDIT_POOLING], acts["base"][AUDIT_POOLING], layer, fit)
            sec = secure_axis(acts["secure"][AUDIT_POOLING], acts["base"][AUDIT_POOLING], layer, fit)
            if float(own.norm()) == 0.0 or float(sec.norm()) == 0.0:
                continue  # a layer the adapters do not change at this pooling: no audit direction there
            vec = remove_component(own, sec)
            meta = {"model_id": spec.model_id, "weights_sha256": spec.weights_sha256, "family": family,
                    "profile": profile, "layer": layer, "n_layers": spec.n_layers, "d_model": spec.d_model,
                    "pooling": AUDIT_POOLING, "contrast": AUDIT_CONTRAST, "kind": "audit",
                    "site": "output of the decoder layer, before the final norm", "seed": summary.get("seed", 0),
                    "n_per_class": {"fit": len(fit), "heldout": len(held)},
                    "cosine_own_with_secure": float(own.double() @ unit(sec.double()) / own.double().norm()),
                    "command": f"emsteer audit --run {run} --validate --family {family}",
                    "input_hashes": inputs, "inputs_sha256": key, "versions": versions()}
            if layer in layers and layers[layer].get("mean_residual_norm") is not None:
                meta["mean_residual_norm"] = repr(float(layers[layer]["mean_residual_norm"]))
            path = tmp / f"layer_{layer}.safetensors"
            save_direction(path, Direction(vec, meta))
            files[path.name] = sha256_file(path)
        write_json_atomic(tmp / CALIBRATION_FILE, calibration_document(tmp, files, acts["base"], acts["insecure"], held))
        manifest = {"format": "emsteer-audit-directions/1", "family": family, "profile": profile,
                    "contrast": AUDIT_CONTRAST, "pooling": AUDIT_POOLING, "inputs": inputs, "inputs_sha256": key,
                    "files": files, "calibration": CALIBRATION_FILE}
        write_json_atomic(tmp / "manifest.json", manifest)
    log(f"{family}: wrote audit directions ({AUDIT_CONTRAST}) and their calibration to {out}")
    return manifest



__all__ = ["AUDIT_CONTRAST", "AUDIT_VERSION", "audit_dir", "audit_direction_path", "audit_validation_path",
           "ensure_audit_directions", "remove_component", "secure_axis"]
