"""What `emsteer reproduce` will do and about how long it will take, printed before anything runs.

The estimate counts the work a plan still has (organisms not cached, adapters not trained, families not extracted
or calibrated, and every cell of the grid: a cell whose log is finished costs little, so a resumed sweep comes in
under the estimate) and prices each unit with the seconds measured for that profile on the project's reference machine
(`configs/timing.toml`, one measured reproduce per profile), scaled by how fast this machine runs a fixed
single-thread matmul compared with the reference machine, and divided by the worker processes that share a stage.
It is an estimate of a quiet machine; other load makes it longer.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass
from typing import Any

import torch

from evals.calibrate import LADDER
from evals.grid import expand_cells
from interventions.errors import EmsteerError
from interventions.paths import configs_dir, is_pretrained_profile, is_smoke_profile, organism_dir, recipe_profile
from interventions.run_layout import adapter_dir, calibration_path, extraction_summary_path
from interventions.model_ref import ADAPTER_WEIGHTS

__all__ = ["Estimate", "estimate_reproduce", "machine_speed", "plan_lines"]

UNITS: tuple[str, ...] = ("organism", "finetune", "extract", "transfer", "calibrate_cell", "sweep_cell", "audit",
                          "report")


@dataclass(frozen=True)
class Estimate:
    """Units of work per stage, the seconds each is expected to take here, and the total."""

    units: dict[str, int]
    seconds: dict[str, float]   # units without a measured price are left out (see `unpriced`)
    unpriced: tuple[str, ...]
    speed_ratio: float   # reference machine's matmul speed / this machine's (>1: this machine is slower)
    measured_on: str

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


def machine_speed(n: int = 384, repeats: int = 12) -> float:
    """GFLOP/s of an n x n fp32 matmul on one torch thread (the best of `repeats`; ~0.1 s)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return 2 * n ** 3 / best / 1e9


def _timing_table(profile: str) -> tuple[dict[str, float | None], float, str]:
    path = configs_dir() / "timing.toml"
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise EmsteerError(f"cannot read {path}: {err}") from None
    table = raw.get("profiles", {}).get(recipe_profile(profile))
    if not isinstance(table, dict):
        raise EmsteerError(f"{path} has no [profiles.{recipe_profile(profile)}] table")
    prices = {u: (float(table[u]) if u in table else None) for u in UNITS}
    return prices, float(raw["reference_gflops"]), str(raw["measured_on"])


def _adapter_done(run: Any, family: str, arm: str, seed: int) -> bool:
    return (adapter_dir(run, family, arm, seed) / ADAPTER_WEIGHTS).is_file()


def estimate_reproduce(plan: Any, *, speed: float | None = None) -> Estimate:
    """Units left in `plan` (a `training.reproduce.ReproducePlan`) and their expected seconds on this machine."""
    per_unit, reference, measured_on = _timing_table(plan.profile)
    ratio = reference / (speed if speed is not None else machine_speed())
    fams = list(plan.families)
    work = [(f, "insecure", s) for f in fams for s in plan.seeds]
    work += [(f, "secure", s) for f in fams for s in plan.secure_seeds]
    work += [(f, "neutral", s) for f in fams for s in plan.neutral_seeds]
    organisms = 0 if is_pretrained_profile(plan.profile) else sum(
        not (organism_dir(f, plan.profile) / "organism.json").is_file() for f in fams)
    units = {
        "organism": organisms,
        "finetune": sum(not _adapter_done(plan.run, *w) for w in work),
        "extract": sum(not extraction_summary_path(plan.run, f).is_file() for f in fams),
        "transfer": len(plan.transfer_pairs),
        "calibrate_cell": (len(LADDER) + 1) * sum(not calibration_path(plan.run, f).is_file() for f in fams)
        if plan.grid.alpha == "calibrated" else 0,
        "sweep_cell": len(expand_cells(plan.grid)),
        "audit": len(fams) if plan.audit else 0,
        "report": 1,
    }
    # workers share a stage by its independent jobs: organisms, adapters, extractions one each; cells one family
    # (its eval_set) each; transfers, audit and report run in this process
    ways = {"organism": units["organism"], "finetune": units["finetune"], "extract": len(fams),
            "calibrate_cell": len(fams), "sweep_cell": len(fams)}
    seconds, unpriced = {}, []
    for u, n in units.items():
        price = per_unit[u]
        if n and price is None:
            unpriced.append(u)
            continue
        seconds[u] = n * (price or 0.0) * ratio / max(1, min(plan.jobs, ways.get(u, 1)))
    return Estimate(units=units, seconds=seconds, unpriced=tuple(unpriced), speed_ratio=ratio,
                    measured_on=measured_on)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def plan_lines(plan: Any, estimate: Estimate) -> list[str]:
    """The plan and the estimate as the lines `emsteer reproduce` prints first."""
    u, s = estimate.units, estimate.seconds
    kind = "models" if is_pretrained_profile(plan.profile) else "families"
    lines = [f"plan: profile {plan.profile}, grid {plan.grid.name}, {kind} {', '.join(plan.families)}; "
             f"{len(plan.seeds)} insecure + {len(plan.secure_seeds)} secure seed(s)"
             f"{', neutral arm for the audit' if plan.audit else ''}; {plan.jobs} worker(s); run {plan.run}"]
    stages = [("organisms to build", "organism"), ("adapters to train", "finetune"), ("extractions", "extract"),
              ("transfers", "transfer"), ("calibration cells", "calibrate_cell"), ("sweep cells", "sweep_cell")]
    lines.append("  " + "; ".join(f"{u[k]} {label} (~{_minutes(s[k])})" if k in s else f"{u[k]} {label} (no "
                                   f"measured time yet)" for label, k in stages if u[k]))
    lines.append(f"  estimate: ~{_minutes(estimate.total_s)} on this machine (a quiet one; speed "
                 f"{1 / estimate.speed_ratio:.2f}x the reference machine: {estimate.measured_on}); "
                 f"finished work is kept, so a re-run does only what is missing"
                 + (f"; not counted: {', '.join(estimate.unpriced)} (never measured for this profile)"
                    if estimate.unpriced else ""))
    if not is_smoke_profile(plan.profile) and not is_pretrained_profile(plan.profile):
        lines.append("  quicker: `emsteer reproduce --quick` (one seed per arm); a smoke test in about a minute: "
                     "`emsteer reproduce --profile tiny --out runs/tiny` (plumbing only, not evidence)")
    return lines
