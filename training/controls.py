"""Materialise and summarise a family's controls for one (layer, seed) cell.

The control maths lives in the intervention variants registered with `controls="own"` (`interventions/variants/`:
`random`, `orthogonal`, `wrong_layer`, `secure_control`), which the steering provider also resolves on the fly;
this module only resolves them through `interventions.registry.resolve_variant`, writes what they return to
`RUN/controls/<family>/layer_<i>_seed_<s>/<variant>.safetensors` (for audit and inspection), and records in
`RUN/controls/<family>/summary.json`, per cell, each control's norm, its cosine with the own direction, the R it
carries and the shared perturbation size alpha * R. The steering hooks normalise every direction and move the
residual by alpha * R, so every variant of a cell perturbs by exactly the same amount.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

from interventions.alpha_calibration import read_calibrated_alpha
from interventions.directions import Direction, save_direction, sha256_file
from interventions.errors import EmsteerError
from interventions.layers import resolve_layer
from interventions.paths import check_run_key
from interventions.registry import VariantContext, resolve_variant, variants_with
from interventions.run_layout import (
    calibration_path,
    controls_dir,
    controls_summary_path,
    extract_command,
    extraction_summary_path,
)
from training.artifacts import json_sha256, provenance, read_json
from training.atomic import atomic_dir, write_json_atomic

CONTROLS_VERSION = "controls/1"


def cosine(a: Direction, b: Direction) -> float:
    va, vb = a.vector.double(), b.vector.double()
    return float(va @ vb / (va.norm() * vb.norm()))


def family_geometry(run: Path, family: str) -> dict[str, Any]:
    """n_layers, d_model and model id of a family, read from its extraction summary."""
    summary = read_json(extraction_summary_path(run, family))
    if summary is None:
        raise EmsteerError(f"{family} has no extracted directions in {run}; run `{extract_command(run, family)}` first")
    for key in ("n_layers", "d_model", "model_id"):
        if key not in summary:
            raise EmsteerError(f"{extraction_summary_path(run, family)} lacks {key!r}; re-run `{extract_command(run, family)}` --force")
    return summary


def calibrated_alpha(run: Path, family: str, alpha: float | None) -> tuple[float, str]:
    """(alpha, where it came from) of a cell: the given one, else the run's calibration for the family (a one-line
    error naming the command that writes it when there is none, never a silent default)."""
    if alpha is not None:
        if not math.isfinite(alpha) or alpha < 0:
            raise EmsteerError(f"--alpha must be a finite size >= 0 (the controls are used with the op of the grid), "
                               f"got {alpha}")
        return float(alpha), "command line"
    value = read_calibrated_alpha(run, family, needed_by=f"emsteer controls for {family}", instead="pass --alpha A")
    return value, str(calibration_path(run, family))


def cell_dir(run: Path, family: str, layer: int, seed: int) -> Path:
    return controls_dir(run, family) / f"layer_{layer}_seed_{seed}"


def run_controls(run: str | Path, family: str, *, layer: int = -1, seeds: Sequence[int] = (0,),
                 alpha: float | None = None, force: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Resolve every control variant for each seed at `layer`, write them and update the summary; returns it."""
    run = Path(run)
    check_run_key(family)
    geo = family_geometry(run, family)
    n_layers, d_model, model_id = int(geo["n_layers"]), int(geo["d_model"]), str(geo["model_id"])
    idx = resolve_layer(n_layers, layer)
    a, a_source = calibrated_alpha(run, family, alpha)
    path = controls_summary_path(run, family)
    control_names = variants_with(controls="own")  # the own direction's matched-magnitude controls
    summary = read_json(path) or {"format": "emsteer-controls/1", "family": family, "cells": []}
    cells = {(c["layer"], c["seed"]): c for c in summary.get("cells", [])}
    for seed in seeds:
        ctx = VariantContext(family=family, run=run, layer=idx, n_layers=n_layers, d_model=d_model, seed=int(seed),
                             model_id=model_id)
        own = resolve_variant("own", ctx)
        controls = {name: resolve_variant(name, ctx) for name in control_names}
        sources: dict[str, str] = dict(own.sources)
        for d in controls.values():
            sources.update(d.sources)
        inputs = {"version": CONTROLS_VERSION, "layer": idx, "seed": int(seed), "alpha": a,
                  "sources": {Path(k).relative_to(run).as_posix() if Path(k).is_relative_to(run) else k: v
                              for k, v in sorted(sources.items())}}
        key = json_sha256(inputs)
        old = cells.get((idx, int(seed)))
        folder = cell_dir(run, family, idx, int(seed))
        if not force and old is not None and old.get("inputs_sha256") == key and all(
                (folder / f).is_file() and sha256_file(folder / f) == h for f, h in old.get("files", {}).items()):
            log(f"{family}: controls at layer {idx}, seed {seed} up to date")
            continue
        R = own.mean_residual_norm
        if R is None or not (R > 0):
            raise EmsteerError(f"the own direction of {family} at layer {idx} records no mean residual norm; "
                               f"re-run `{extract_command(run, family)}` --force")
        command = f"emsteer controls --run {run} --family {family} --layer {idx} --seed {seed} --alpha {a}"
        prov = provenance(command, int(seed), inputs)
        entry: dict[str, Any] = {
            "layer": idx, "seed": int(seed), "alpha": a, "alpha_source": a_source, "R": R, "magnitude": a * R,
            "magnitude_note": "every variant moves the residual by alpha * R (the hooks normalise the direction)",
            "own": {"norm": own.norm, "R": R},
            "controls": {}, "inputs_sha256": key, "command": command, "versions": prov["versions"],
            "input_hashes": inputs["sources"],
        }
        files: dict[str, str] = {}
        with atomic_dir(folder, replace=True) as tmp:
            for name, d in controls.items():
                if d.width != d_model:
                    raise EmsteerError(f"control {name} has width {d.width}, not {family}'s hidden size {d_model}")
                rec = d.mean_residual_norm
                meta = dict(d.metadata)
                meta.update({"variant": name, "command": command, "input_hashes": inputs["sources"],
                             "controls_inputs_sha256": key, "layer": str(idx), "seed": str(seed)})
                save_direction(tmp / f"{name}.safetensors", Direction(d.vector, meta))
                entry["controls"][name] = {
                    "norm": d.norm, "cosine_with_own": cosine(d, own), "R": rec,
                    "r_matches_own": rec is not None and math.isclose(rec, R, rel_tol=1e-6),
                    "magnitude": a * R,
                    **({"source_layer": int(d.metadata["source_layer"])} if "source_layer" in d.metadata else {}),
                    **({"control_seed": int(d.metadata["control_seed"])} if "control_seed" in d.metadata else {}),
                }
            for p in sorted(tmp.glob("*.safetensors")):
                files[p.name] = sha256_file(p)
        entry["files"] = files
        entry["folder"] = folder.relative_to(run).as_posix()
        cells[(idx, int(seed))] = entry
        mism = [n for n, c in entry["controls"].items() if not c["r_matches_own"]]
        log(f"{family}: controls at layer {idx}, seed {seed}: magnitude alpha*R = {a:g}*{R:.4g}"
            + (f"; WARNING R differs from own for {', '.join(mism)}" if mism else ""))
    summary.update({"family": family, "model_id": model_id, "n_layers": n_layers, "d_model": d_model,
                    "variants": control_names,
                    "cells": [cells[k] for k in sorted(cells)]})
    write_json_atomic(path, summary)
    return summary
