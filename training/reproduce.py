"""`emsteer reproduce`: the whole study on the micro organisms, end to end, resumable.

Stages (each a no-op when its artifacts exist with the same inputs, so an interrupted run finishes only what
is missing): organisms -> finetunes (insecure x seeds, secure x seeds, neutral x 1 for the audit) -> extract
(seed-0 adapters) -> transfer (every ordered pair of families) -> calibrate alpha per family -> controls (at that
alpha) -> sweep (the grid, via Inspect's eval_set) -> audit validation -> report. Stage timings go to
`RUN/reproduce.json`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from evals.calibrate import calibrate_families, calibration_is_current
from evals.grid import Grid, expand_cells, load_grid
from evals.sweep import check_cells
from evals.sweep_backends import SweepBackend, check_backend
from interventions.atomic import write_json_atomic
from interventions.errors import EmsteerError
from interventions.paths import check_study_profile, is_pretrained_profile, prompts_profile, recipe_profile
from interventions.run_layout import worker_log_path
from interventions.workers import default_jobs, run_in_workers, stderr_line
from training.controls import run_controls
from training.extract import run_extract
from training.finetune_pool import finetune_jobs
from training.run_manifest import check_run, ensure_run
from training.transfer import run_transfer

__all__ = ["ReproducePlan", "plan_reproduce", "run_reproduce"]

Log = Callable[[str], None]


@dataclass
class ReproducePlan:
    """What a reproduce run will do, validated before anything runs."""

    run: Path
    profile: str
    families: tuple[str, ...]
    grid: Grid
    seeds: tuple[int, ...]
    secure_seeds: tuple[int, ...]
    neutral_seeds: tuple[int, ...]
    transfer_pairs: tuple[tuple[str, str], ...]
    audit: bool = True
    display: str = "rich"
    backend: str = "local"
    jobs: int = 1
    timings: dict[str, float] = field(default_factory=dict)


# The grid a profile runs unless --grid says otherwise: its own smoke or pretrained grid, else the paper's.
PROFILE_GRIDS: dict[str, str] = {"tiny": "tiny", "real-cpu": "real-cpu"}


def default_grid(profile: str) -> str:
    """The grid `emsteer reproduce --profile PROFILE` runs without --grid."""
    return PROFILE_GRIDS.get(recipe_profile(profile), "paper")


def plan_reproduce(run: str | Path, *, profile: str = "default", families: tuple[str, ...] | None = None,
                   grid: str | Path | None = None, seeds: int | None = None, secure_seeds: int | None = None,
                   audit: bool = True, display: str = "rich", backend: str = "local",
                   jobs: int | None = None, quick: bool = False) -> ReproducePlan:
    """Validate the arguments (profile, run directory, grid, families, seed counts, backend, jobs) without running
    anything. `quick`: one seed per arm (and a pretrained profile's first model only) unless given. `jobs`: worker
    processes for the finetunes, the extraction and a local sweep (default: one per core, at most 8)."""
    check_study_profile(profile)
    check_backend(backend, jobs)
    check_run(run, profile)
    g = load_grid(grid if grid is not None else default_grid(profile))
    fams = tuple(families) if families else g.families
    if quick:  # the quick look: one seed per arm; a pretrained profile's first model only
        seeds, secure_seeds = 1 if seeds is None else seeds, 1 if secure_seeds is None else secure_seeds
        if is_pretrained_profile(profile) and not families:
            fams = fams[:1]
    if is_pretrained_profile(profile):
        from interventions.members import check_member  # deferred: model_ref imports torch; only pretrained runs

        for f in fams:
            check_member(f, profile)
        audit = False  # the audit's neutral arm is a micro corpus arm; the real Betley data have none
    bad = [f for f in fams if f not in g.families]
    if bad:
        raise EmsteerError(f"family {bad[0]!r} is not in grid {g.name} (its families: {', '.join(g.families)})")
    if seeds is not None:
        if seeds < 1:
            raise EmsteerError("--seeds must be at least 1")
        g = replace(g, seeds=tuple(range(seeds)))
    g = replace(g, families=fams, transfer_pairs=tuple((a, b) for a, b in g.transfer_pairs if a in fams and b in fams))
    n_secure = len(g.seeds) if secure_seeds is None else secure_seeds
    if n_secure < 1:
        raise EmsteerError("--secure-seeds must be at least 1 (the secure-control direction needs the seed-0 secure adapter)")
    g = replace(g, secure_seeds=tuple(range(n_secure)))
    return ReproducePlan(run=Path(run), profile=profile, families=fams, grid=g, seeds=g.seeds,
                         secure_seeds=tuple(range(n_secure)), neutral_seeds=(0,) if audit else (),
                         transfer_pairs=g.transfer_pairs, audit=audit, display=display, backend=backend,
                         jobs=default_jobs() if jobs is None else jobs)


def _stage(plan: ReproducePlan, name: str, log: Log, fn: Callable[[], Any]) -> Any:
    log(f"== {name}")
    t0 = time.perf_counter()
    out = fn()
    plan.timings[name] = round(time.perf_counter() - t0, 1)
    log(f"== {name}: {plan.timings[name]:.1f} s")
    _write_record(plan)
    return out


def _write_record(plan: ReproducePlan) -> None:
    """`RUN/reproduce.json`: what ran, on how many workers, and each stage's seconds."""
    write_json_atomic(plan.run / "reproduce.json", {"profile": plan.profile, "families": list(plan.families),
                                                    "grid": plan.grid.name, "seeds": list(plan.seeds),
                                                    "secure_seeds": list(plan.secure_seeds), "backend": plan.backend,
                                                    "jobs": plan.jobs, "cpus": os.cpu_count(),
                                                    "timings_s": plan.timings})


def extract_family(run: str, family: str, profile: str) -> str:
    """One family's extraction from its seed-0 adapters (a worker body: lines go to stderr)."""
    run_extract(Path(run), family, profile=profile, seed=0, log=stderr_line)
    return family


def check_pretrained(members: list[str], profile: str, *, log: Log = print) -> None:
    """A pretrained profile's first stage: every model is fetched (one line naming `emsteer model fetch` when not),
    and the general prompts' corpus (a micro profile's, no organism trained) is written."""
    from interventions.members import member_ref  # deferred: model_ref imports torch
    from training.organisms import ensure_corpus  # deferred: transformers + accelerate, ~4 s in every extract worker
    from training.profiles import load_profile  # deferred: as above

    for member in members:
        ref = member_ref(member, profile)
        log(f"{member}: {ref.path} (weights sha256 {str(ref.weights_sha256)[:12]}...)")
    ensure_corpus(load_profile(prompts_profile(profile)))


def run_reproduce(plan: ReproducePlan, *, log: Log = print, progress: bool = True) -> dict[str, Any]:
    """Run every stage of `plan`; return the report summary."""
    from evals.report import write_report  # deferred: pandas, ~0.5 s in every extract worker (they import this module)
    from training.organisms import build_organisms  # deferred: transformers + accelerate, ~4 s in every extract worker

    t_all = time.perf_counter()
    ensure_run(plan.run, plan.profile)
    fams = list(plan.families)

    if is_pretrained_profile(plan.profile):
        _stage(plan, "models", log, lambda: check_pretrained(fams, plan.profile, log=log))
    else:
        _stage(plan, "organisms", log, lambda: build_organisms(fams, plan.profile, jobs=plan.jobs,
                                                               progress=progress, log=log))

    def finetunes() -> None:
        work = [(f, "insecure", s) for f in fams for s in plan.seeds]
        work += [(f, "secure", s) for f in fams for s in plan.secure_seeds]
        work += [(f, "neutral", s) for f in fams for s in plan.neutral_seeds]
        finetune_jobs(plan.run, work, plan.profile, jobs=plan.jobs, progress=progress, log=log)

    _stage(plan, "finetune", log, finetunes)
    _stage(plan, "extract", log, lambda: run_in_workers(
        extract_family, [(str(plan.run), f, plan.profile) for f in fams], plan.jobs,
        log_files=[worker_log_path(plan.run, f"extract-{f}") for f in fams]))
    cache: dict = {}
    _stage(plan, "transfer", log, lambda: [run_transfer(plan.run, a, b, profile=plan.profile, layer=plan.grid.layer,
                                                        state_cache=cache, log=log) for a, b in plan.transfer_pairs])

    runner = SweepBackend(plan.run, plan.profile, backend=plan.backend, jobs=plan.jobs, display=plan.display, log=log)

    def calibrate() -> None:
        todo = [f for f in fams if not calibration_is_current(plan.run, f, seed=plan.seeds[0], layer=plan.grid.layer,
                                                              op=plan.grid.op, task=plan.grid.task)]
        if todo:
            calibrate_families(plan.run, todo, plan.profile, seed=plan.seeds[0], layer=plan.grid.layer,
                               op=plan.grid.op, task=plan.grid.task, runner=runner,
                               log=log)

    if plan.grid.alpha == "calibrated":
        _stage(plan, "calibrate", log, calibrate)
    # after calibration: the controls record the alpha * R the sweep steers with (the calibrated alpha, or the grid's)
    control_seeds = sorted(set(plan.seeds))
    control_alpha = None if plan.grid.alpha == "calibrated" else float(plan.grid.alpha)
    _stage(plan, "controls", log, lambda: [run_controls(plan.run, f, layer=plan.grid.layer, seeds=control_seeds,
                                                        alpha=control_alpha, log=log) for f in fams])

    def sweep() -> None:
        cells = expand_cells(plan.grid)
        alphas = check_cells(cells, plan.run, plan.profile)
        result = runner(cells, name=plan.grid.name, task_args=dict(plan.grid.task), alphas=alphas)
        if not result.success:
            raise EmsteerError(f"the sweep did not finish every cell; re-run the same command to finish the rest "
                               f"(logs in {plan.run / 'logs' / plan.grid.name})")

    _stage(plan, "sweep", log, sweep)
    if plan.audit:
        from training.audit_validation import validate_audit  # deferred: inspect_ai, ~1.7 s in every extract worker

        _stage(plan, "audit", log, lambda: [validate_audit(plan.run, f, plan.profile, layer=plan.grid.layer, log=log)
                                            for f in fams])
    summary = _stage(plan, "report", log, lambda: write_report(plan.run, plan.grid.name, log=log))
    plan.timings["total"] = round(time.perf_counter() - t_all, 1)
    _write_record(plan)
    return summary
