"""Calibrate the steering strength alpha per family on the calibration half of the prompts.

The own direction is swept over a ladder of alphas on the insecure model (seed `seed`), next to the unsteered
insecure model. The effect at alpha is the drop in spillover (unsteered minus steered). Alpha is *coherent*
when the steered model's coherence (share of its non-code answers to general prompts that are well-formed
prose) is within `coherence_tolerance` of the unsteered model's. The calibrated alpha is the smallest coherent
alpha whose effect reaches `share` of the largest coherent effect. Every variant of the family then uses that
same alpha (so every variant perturbs by the same alpha * R). Written to `RUN/calibration/<family>.json` with
the whole ladder, so the choice can be checked.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

from evals.grid import Cell
from evals.sweep import SweepResult, run_cells
import hashlib
import json

from interventions.atomic import write_json_atomic
from interventions.errors import EmsteerError
from interventions.model_ref import ADAPTER_WEIGHTS
from interventions.weights_hash import weights_sha256
from interventions.run_layout import adapter_dir, calibration_path, extraction_summary_path

__all__ = ["LADDER", "calibrate_family", "calibrate_families", "calibration_cells", "choose_alpha", "cell_rates"]

LADDER: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
SHARE = 0.8
COHERENCE_TOLERANCE = 0.10


def cell_rates(log_location: str) -> dict[str, float]:
    """spillover, coherence and code_on_coding of one finished log (NaN where a rate has no samples)."""
    from inspect_ai.log import read_eval_log  # deferred: inspect_ai, ~1.3 s at `emsteer sweep` start (bad input too)

    lg = read_eval_log(log_location, header_only=True)
    out: dict[str, float] = {}
    for score in (lg.results.scores if lg.results else []):
        for key, m in score.metrics.items():
            if key in ("spillover", "code_on_coding", "coherence", "spillover_stderr", "coherence_stderr"):
                out.setdefault(key, float(m.value))
    return out


def choose_alpha(unsteered: dict[str, float], ladder: dict[float, dict[str, float]], *, share: float = SHARE,
                 coherence_tolerance: float = COHERENCE_TOLERANCE) -> tuple[float, str]:
    """The calibrated alpha and why (see the module docstring)."""
    base_sp = unsteered["spillover"]
    base_coh = unsteered.get("coherence", float("nan"))

    def coherent(r: dict[str, float]) -> bool:
        c = r.get("coherence", float("nan"))
        if math.isnan(c):  # every answer is code: no prose to judge -> not shown coherent
            return False
        return math.isnan(base_coh) or c >= base_coh - coherence_tolerance

    ok = {a: base_sp - r["spillover"] for a, r in sorted(ladder.items()) if coherent(r)}
    if not ok:
        smallest = min(ladder)
        return smallest, f"no alpha kept coherence within {coherence_tolerance:.2f}; took the smallest ({smallest:g})"
    best = max(ok.values())
    if best <= 0:
        smallest = min(ok)
        return smallest, f"no coherent alpha lowered spillover; took the smallest coherent one ({smallest:g})"
    alpha = min(a for a, e in ok.items() if e >= share * best - 1e-9)
    return alpha, (f"smallest coherent alpha reaching {share:.0%} of the largest coherent effect "
                   f"({best * 100:.1f} points)")


def calibration_cells(family: str, *, seed: int = 0, ladder: tuple[float, ...] = LADDER, layer: int = -1,
                      op: str = "subtract") -> tuple[Cell, list[Cell]]:
    """The unsteered cell and the ladder's own-direction cells of one family."""
    unsteered = Cell(name=f"{family}.calibration.none.insecure.s{seed}", family=family, kind="calibration",
                     arm="insecure", seed=seed, variant="none", alpha=None, op=op, layer=layer)
    steps = [Cell(name=f"{family}.calibration.own.insecure.s{seed}.a{a:g}", family=family, kind="calibration",
                  arm="insecure", seed=seed, variant="own", alpha=float(a), op=op, layer=layer) for a in ladder]
    return unsteered, steps


Runner = Callable[..., SweepResult]  # (cells, *, name, task_args, alphas) -> SweepResult, e.g. a SweepBackend


def calibration_inputs(run: str | Path, family: str, *, seed: int = 0, ladder: tuple[float, ...] = LADDER,
                       layer: int = -1, op: str = "subtract", task: dict[str, Any] | None = None) -> str:
    """sha256 of what a family's calibration depends on: the insecure adapter's weights, the extraction that
    made the own directions, the ladder, layer, op and task arguments (a change of any of them recalibrates)."""
    adapter = adapter_dir(run, family, "insecure", seed)
    try:
        extraction = json.loads(extraction_summary_path(run, family).read_text()).get("inputs_sha256")
    except (OSError, ValueError):
        extraction = None
    blob = {"adapter_sha256": weights_sha256(adapter) if (adapter / ADAPTER_WEIGHTS).is_file() else None,
            "extraction": extraction, "ladder": list(ladder), "layer": layer, "op": op,
            "task": dict(sorted((task or {}).items()))}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def calibration_is_current(run: str | Path, family: str, **kwargs: Any) -> bool:
    """True when `RUN/calibration/<family>.json` exists and was made from the current inputs."""
    try:
        record = json.loads(calibration_path(run, family).read_text())
    except (OSError, ValueError):
        return False
    return record.get("inputs_sha256") == calibration_inputs(run, family, **kwargs)


def calibrate_families(run: str | Path, families: list[str] | tuple[str, ...], profile: str, *, seed: int = 0,
                       ladder: tuple[float, ...] = LADDER, layer: int = -1, op: str = "subtract",
                       task: dict[str, Any] | None = None,
                       share: float = SHARE, coherence_tolerance: float = COHERENCE_TOLERANCE,
                       runner: Runner | None = None, display: str = "rich",
                       log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run every family's ladder on the calibration split in one sweep (`runner`, default: this process), then write
    `RUN/calibration/<family>.json` for each; return their contents by family. `task`: the grid's spillover-task
    arguments (max_tokens, temperature, samples), so alpha is calibrated under the sweep's own decoding."""
    t0 = time.perf_counter()
    per_family = {f: calibration_cells(f, seed=seed, ladder=ladder, layer=layer, op=op) for f in families}
    cells = [c for unsteered, steps in per_family.values() for c in (unsteered, *steps)]
    task_args = {"max_tokens": 64, **{k: v for k, v in (task or {}).items() if k != "split"},
                 "split": "calibration"}
    if runner is None:
        result = run_cells(cells, run, profile, name="calibration", task_args=task_args, alphas={}, display=display,
                           log=log)
    else:
        result = runner(cells, name="calibration", task_args=task_args, alphas={})
    missing = [c.name for c in cells if c.name not in result.logs]
    if not result.success or missing:
        raise EmsteerError(f"calibration of {', '.join(families)} did not finish (cells without a log: "
                           f"{', '.join(missing) or '-'}); re-run the same command to finish it")
    seconds = round(time.perf_counter() - t0, 1)
    records: dict[str, dict[str, Any]] = {}
    for family, (unsteered, steps) in per_family.items():
        base = cell_rates(result.logs[unsteered.name])
        rates = {float(c.alpha): cell_rates(result.logs[c.name]) for c in steps}  # type: ignore[arg-type]
        alpha, reason = choose_alpha(base, rates, share=share, coherence_tolerance=coherence_tolerance)
        record = {
            "family": family, "alpha": alpha, "reason": reason, "share": share,
            "coherence_tolerance": coherence_tolerance, "split": "calibration", "seed": seed, "layer": layer, "op": op,
            "max_tokens": task_args["max_tokens"], "task": task_args, "unsteered": base,
            "ladder": [{"alpha": a, **r, "effect_points": (base["spillover"] - r["spillover"]) * 100}
                       for a, r in sorted(rates.items())],
            "logs": {"unsteered": result.logs[unsteered.name],
                     **{f"{c.alpha:g}": result.logs[c.name] for c in steps}},
            "seconds": seconds, "calibrated_with": sorted(families),
            "inputs_sha256": calibration_inputs(run, family, seed=seed, ladder=ladder, layer=layer, op=op, task=task),
        }
        write_json_atomic(calibration_path(run, family), record)
        log(f"{family}: calibrated alpha {alpha:g} ({reason})")
        records[family] = record
    return records


def calibrate_family(run: str | Path, family: str, profile: str, **kwargs: Any) -> dict[str, Any]:
    """Calibrate one family (see `calibrate_families`); return its record."""
    return calibrate_families(run, [family], profile, **kwargs)[family]
