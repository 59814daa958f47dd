"""Validation of the audit over held-out checkpoints (`emsteer audit --validate`): every checkpoint of a family
the audit direction never saw is audited, and AUROC over checkpoints says how well each direction (audit, own,
transferred) tells insecure finetunes from the rest. Written to RUN/audit/<family>/validation.json.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from evals.monitor import auroc_with_interval
from interventions.directions import Direction
from interventions.errors import EmsteerError
from interventions.layers import resolve_layer
from interventions.paths import FAMILIES
from interventions.run_layout import (
    adapter_dir,
    extract_command,
    extraction_summary_path,
    own_direction_path,
    pooling_direction_path,
    transferred_direction_path,
)
from training import activations  # `activations.load_model` looked up at call time (tests replace it)
from training.artifacts import read_json
from training.atomic import write_json_atomic
from training.audit_directions import (
    AUDIT_CONTRAST,
    audit_direction_path,
    audit_validation_path,
    ensure_audit_directions,
    remove_component,
    secure_axis,
)
from training.audit_inputs import audit_prompts, check_direction, last_prompt_acts, resolve_model
from training.audit_scoring import (
    AUDIT_POOLING,
    DEFAULT_THRESHOLD,
    cached_activations,
    calibration_entry,
    calibration_for,
    project,
    score_audit,
)
from training.prompt_split import split_halves
from training.run_manifest import check_run

Log = Callable[[str], None]


def _seeds(run: Path, family: str, arm: str) -> list[int]:
    parent = adapter_dir(run, family, arm, 0).parent
    if not parent.is_dir():
        return []
    out = []
    for p in parent.iterdir():
        if p.is_dir() and p.name.startswith("seed_") and p.name[5:].isdigit() and (p / "adapter_config.json").is_file():
            out.append(int(p.name[5:]))
    return sorted(out)


def _auroc_over(checkpoints: list[dict[str, Any]], key: str, stat: str = "effect_size") -> float | None:
    rows = [(c["scores"][key][stat], c["label"]) for c in checkpoints if key in c["scores"]]
    return auroc_with_interval([r[0] for r in rows], [r[1] for r in rows], n_boot=0)["auroc"]


def _checkpoints(run: Path, family: str, dir_seed: int) -> list[tuple[str, int, Path | None]]:
    """(name, label, adapter) of every checkpoint the audit direction never saw: the base, insecure seeds other
    than the direction's, secure seeds other than the direction's (the audit direction uses the secure arm of its
    seed), every neutral seed."""
    out: list[tuple[str, int, Path | None]] = [("base", 0, None)]
    for arm, label in (("insecure", 1), ("secure", 0), ("neutral", 0)):
        for seed in _seeds(run, family, arm):
            if arm == "neutral" or seed != dir_seed:
                out.append((f"{arm}/seed_{seed}", label, adapter_dir(run, family, arm, seed)))
    return out


def validate_audit(run: str | Path, family: str, profile: str, *, layer: int = -1,
                   threshold: float = DEFAULT_THRESHOLD, batch_size: int = 16, n_boot: int = 200, write: bool = True,
                   log: Log = print) -> dict[str, Any]:
    """Audit every checkpoint of `family` in `run` the direction never saw (see `_checkpoints`; the base on the
    audit half of the prompts) and return AUROC over checkpoints (insecure = positive, score = effect size, so
    each direction's own orientation counts and no calibration is involved) for the audit direction
    (`audit_auroc_within`), the extraction's own directions, and every transferred direction found (as mapped,
    and with the receiver's secure-vs-base component removed), plus decisions at `threshold`."""
    started = time.perf_counter()
    run = Path(run)
    check_run(run, profile)
    spec = resolve_model(f"micro-{family}", profile)
    summary = read_json(extraction_summary_path(run, family))
    if summary is None:
        raise EmsteerError(f"no directions for {family} in {run}; run `{extract_command(run, family)}`")
    lay = resolve_layer(spec.n_layers, layer)
    dir_seed = int(summary.get("seed", 0))
    ensure_audit_directions(run, family, profile, log=log)

    paths: dict[str, Path] = {"audit": audit_direction_path(run, family, lay),
                              "own": own_direction_path(run, family, lay),
                              "own_last_prompt": pooling_direction_path(run, family, AUDIT_POOLING, lay)}
    for donor in FAMILIES:
        if donor != family and transferred_direction_path(run, donor, family).is_file():
            paths[f"transferred:{donor}"] = transferred_direction_path(run, donor, family)
    directions: dict[str, tuple[Direction, dict[str, Any]]] = {}
    for key, p in paths.items():
        if not p.is_file():
            raise EmsteerError(f"missing direction {p}; run `{extract_command(run, family)}`")
        d = check_direction(p, spec, spec, run)
        directions[key] = (d, calibration_for(d, p, run=run, family=family, weights_sha=spec.weights_sha256))
    base_c, sec_c = (cached_activations(run, family, t, spec.weights_sha256)[AUDIT_POOLING] for t in ("base", "secure"))
    fit, held = split_halves(int(base_c.shape[0]))
    for key in [k for k in directions if k.startswith("transferred:")]:
        d, _ = directions[key]
        vec = remove_component(d.vector, secure_axis(sec_c, base_c, d.layer, fit))
        stripped = Direction(vec, {**d.metadata, "contrast": d.metadata.get("contrast", "") + "; secure component removed"},
                             dict(d.sources))
        base_acts = cached_activations(run, family, "base", spec.weights_sha256)
        ins_acts = cached_activations(run, family, "insecure", spec.weights_sha256)
        cal = {**calibration_entry(vec, d.layer, base_acts, ins_acts, held), "source": "fitted now (cached activations)"}
        directions[key.replace("transferred:", "transferred_secure_removed:")] = (stripped, cal)

    checkpoints = _checkpoints(run, family, dir_seed)
    counts = {"insecure": 0, "secure": 0, "neutral": 0, "base": 0}
    for name, _, _ in checkpoints:
        counts[name.split("/")[0]] += 1
    ref_prompts, aud_prompts = audit_prompts(profile)
    base_lm = activations.load_model(family, profile=profile, label=f"{family}/base")
    ref_acts = last_prompt_acts(base_lm, ref_prompts, batch_size)
    rows: list[dict[str, Any]] = []
    seconds = []
    for name, label, ad in checkpoints:
        t0 = time.perf_counter()
        lm = base_lm if ad is None else activations.load_model(family, profile=profile, adapter=ad,
                                                               label=f"{family}/{name}")
        acts = last_prompt_acts(lm, aud_prompts, batch_size)
        seconds.append(time.perf_counter() - t0)
        scores = {key: score_audit(project(ref_acts, d.layer, d.vector), project(acts, d.layer, d.vector), cal,
                                   threshold=threshold, n_boot=n_boot)
                  for key, (d, cal) in directions.items()}
        rows.append({"checkpoint": name, "label": label, "adapter": str(ad) if ad else None, "scores": scores})
        log(f"{family} audit {name}: probability {scores['audit']['probability']:.3f}, effect size "
            f"{scores['audit']['effect_size']:.2f} base sd")

    def accuracy(key: str) -> float:
        return sum(int(r["scores"][key]["flagged"]) == r["label"] for r in rows) / len(rows)

    def by_prefix(prefix: str, fn: Callable[[str], Any]) -> dict[str, Any]:
        return {k.split(":", 1)[1]: fn(k) for k in directions if k.startswith(prefix + ":")}

    result = {
        "format": "emsteer-audit-validation/1", "family": family, "profile": profile, "layer": lay,
        "audit_pooling": AUDIT_POOLING, "audit_direction": str(paths["audit"]), "audit_contrast": AUDIT_CONTRAST,
        "direction_seed": dir_seed, "threshold": threshold, "positive": "insecure finetunes",
        "auroc_score": "effect size (shift of the audited projections against the base reference, in base sd)",
        "audit_auroc_within": _auroc_over(rows, "audit"),
        "audit_auroc_within_probability": _auroc_over(rows, "audit", "probability"),
        "audit_auroc_within_by_direction": {k: _auroc_over(rows, k) for k in ("audit", "own", "own_last_prompt")},
        "audit_auroc_transferred": by_prefix("transferred", lambda k: _auroc_over(rows, k)),
        "audit_auroc_transferred_secure_removed": by_prefix("transferred_secure_removed", lambda k: _auroc_over(rows, k)),
        "audit_accuracy_within": accuracy("audit"),
        "audit_accuracy_transferred": by_prefix("transferred", accuracy),
        "n_checkpoints": counts,
        "n_prompts": {"reference": len(ref_prompts), "audited": len(aud_prompts)},
        "calibration": {k: {"source": cal["source"], "auroc": cal["auroc"], "effect_size": cal["effect_size"]}
                        for k, (_, cal) in directions.items()},
        "checkpoints": rows,
        "seconds_per_checkpoint": sum(seconds) / len(seconds),
        "seconds": time.perf_counter() - started,
    }
    if result["audit_auroc_within"] is None:
        result["note"] = (f"AUROC needs insecure checkpoints the direction never saw (seeds other than {dir_seed}) "
                          f"and negatives; have {counts}")
    if write:
        write_json_atomic(audit_validation_path(run, family), result)
    return result


__all__ = ["validate_audit"]
