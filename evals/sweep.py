"""Run a grid's cells as Inspect tasks with `eval_set`: one log per cell under `RUN/logs/<grid>/`, retries, and a
re-run that skips finished cells (Inspect pairs tasks with logs by task identity, which includes the model args,
so a cell whose files changed is run again).

Every cell runs `evals/spillover.py` on a `steer/` model whose `-M` keys name the cell's adapter, variant, alpha,
layer, op and seeds, plus `resolved` (sha256 of every file and the full intervention, from
`interventions.provider.resolved_model_args`), so each log carries its own provenance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evals.grid import Cell
from interventions.alpha_calibration import read_calibrated_alpha
from interventions.atomic import write_json_atomic
from interventions.errors import EmsteerError
from interventions.layers import resolve_layer
from interventions.members import member_n_layers, member_preset
from interventions.paths import is_pretrained_profile
from interventions.run_layout import (adapter_dir, finetune_command, logs_dir, own_direction_path,
                                       transferred_direction_path)

CELLS_FILE = "cells.json"  # the cells of the latest sweep into a log folder (the report reads only those)

__all__ = ["CELLS_FILE", "SweepResult", "cell_alpha", "cell_model_args", "cell_task", "cell_tasks", "check_cells",
           "run_cells", "run_eval_set", "preset_for", "sweep_log_dir"]


def preset_for(family: str, profile: str = "default") -> str:
    """The `steer/` preset of a run's member (`micro-<family>`, or a pretrained profile's fetched model)."""
    return member_preset(family, profile)


def sweep_log_dir(run: str | Path, name: str) -> Path:
    """`RUN/logs/<name>`: the eval-set folder of one grid (or `calibration`)."""
    return logs_dir(run) / name


def cell_model_args(cell: Cell, run: str | Path, profile: str, alpha: float | None) -> dict[str, Any]:
    """The `steer/` `-M` keys of a cell (without `resolved`)."""
    args: dict[str, Any] = {"run": str(Path(run).resolve()), "layer": cell.layer,
                            "seed": cell.seed if cell.control_seed is None else cell.control_seed}
    if not is_pretrained_profile(profile):
        args["profile"] = profile  # selects the micro organism; a fetched model has one folder
    if cell.arm is not None:
        args["adapter"] = str(adapter_dir(run, cell.family, cell.arm, cell.seed).resolve())
    args["variant"] = cell.variant
    if cell.variant != "none":
        args["op"] = cell.op
        args["alpha"] = alpha
    if cell.donor and cell.variant != "none":
        args["donor"] = cell.donor
    if cell.monitor:
        args["monitor"] = str(monitor_file(cell, run, profile))
    return args


def monitor_file(cell: Cell, run: str | Path, profile: str) -> Path:
    """The direction file a monitored cell records projections on: the family's own direction at the cell's
    layer, or the donor's transferred direction."""
    if cell.monitor == "transferred":
        assert cell.donor is not None
        return transferred_direction_path(run, cell.donor, cell.family).resolve()
    n_layers = member_n_layers(cell.family, profile)
    return own_direction_path(run, cell.family, resolve_layer(n_layers, cell.layer)).resolve()


def check_cells(cells: list[Cell], run: str | Path, profile: str) -> dict[str, float]:
    """Check every file the cells need before anything runs; return the calibrated alpha per family used."""
    alphas: dict[str, float] = {}
    missing: list[str] = []
    for cell in cells:
        if cell.arm is not None and not (adapter_dir(run, cell.family, cell.arm, cell.seed) / "adapter_config.json").is_file():
            missing.append(f"adapter {adapter_dir(run, cell.family, cell.arm, cell.seed)} "
                           f"(`{finetune_command(run, cell.family, cell.arm, cell.seed)}`)")
        if cell.monitor and not monitor_file(cell, run, profile).is_file():
            missing.append(f"monitor direction {monitor_file(cell, run, profile)}")
        if cell.alpha == "calibrated" and cell.family not in alphas:
            alphas[cell.family] = read_calibrated_alpha(run, cell.family, needed_by='the grid (alpha = "calibrated")')
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise EmsteerError(f"missing {missing[0]}{more}")
    return alphas


def cell_alpha(cell: Cell, alphas: dict[str, float]) -> float | None:
    """The magnitude a cell steers with: none for an unsteered cell, its family's calibrated alpha, or its own."""
    if cell.variant == "none":
        return None
    return alphas[cell.family] if cell.alpha == "calibrated" else float(cell.alpha)  # type: ignore[arg-type]


def cell_task(cell: Cell, run: str | Path, profile: str, task_args: dict[str, Any], alpha: float | None,
              grid_name: str) -> Any:
    """The Inspect task of one cell: `spillover` on the cell's resolved `steer/` model, labelled with the cell."""
    from inspect_ai import Task  # deferred: inspect_ai, ~1.3 s at `emsteer sweep` start (bad input too)
    from inspect_ai.model import get_model  # deferred: inspect_ai, as above

    from evals.spillover import spillover  # deferred: inspect_ai, as above
    from interventions.provider import resolve_model_args  # deferred: transformers + inspect_ai, ~3 s, as above

    model_name = f"steer/{preset_for(cell.family, profile)}"
    margs, plan = resolve_model_args(model_name, cell_model_args(cell, run, profile, alpha))
    base = spillover(profile=profile, **task_args)
    label = {**cell.label(), "alpha_value": alpha, "grid": grid_name}
    return Task(dataset=base.dataset, solver=base.solver, scorer=base.scorer, config=base.config,
                model=get_model(model_name, **margs), name=f"spillover_{cell.name}".replace("-", "_"),
                metadata={**(base.metadata or {}), "steer": plan.header(), "cell": label},
                display_name=f"{cell.name}: {plan.label()}", tags=[*plan.tags(), f"grid:{grid_name}"])


def cell_tasks(cells: list[Cell], run: str | Path, profile: str, task_args: dict[str, Any],
               alphas: dict[str, float], grid_name: str) -> list[Any]:
    """The Inspect tasks of `cells`, each at its own magnitude (see `cell_alpha`)."""
    return [cell_task(c, run, profile, task_args, cell_alpha(c, alphas), grid_name) for c in cells]


def run_eval_set(tasks: list[Any], log_dir: str | Path, *, display: str, max_tasks: int,
                 retry_attempts: int) -> tuple[bool, list[Any]]:
    """Inspect's `eval_set` with the sweep's options, the one place they are set: every runner (in-process,
    worker groups, Ray) passes the same ones, so task identities (and so skipping finished cells) match."""
    from inspect_ai import eval_set  # deferred: importing inspect_ai costs seconds on every CLI start

    ok, logs = eval_set(tasks, log_dir=str(log_dir), display=display, max_tasks=max_tasks,
                        retry_attempts=retry_attempts, retry_wait=1, log_dir_allow_dirty=True, score_display=False)
    return bool(ok), list(logs)


@dataclass
class SweepResult:
    """What `run_cells` did: whether every cell succeeded, and one log path per cell."""

    success: bool
    logs: dict[str, str]


def run_cells(cells: list[Cell], run: str | Path, profile: str, *, name: str, task_args: dict[str, Any],
              alphas: dict[str, float], display: str = "rich", max_tasks: int = 2, retry_attempts: int = 2,
              log: Callable[[str], None] = print) -> SweepResult:
    """Run cells through `eval_set` into `RUN/logs/<name>` (finished cells are skipped on a re-run)."""
    if not cells:
        raise EmsteerError("the grid selects no cells")
    tasks = cell_tasks(cells, run, profile, task_args, alphas, name)
    folder = sweep_log_dir(run, name)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / CELLS_FILE, {"cells": [c.label() for c in cells]})
    log(f"sweep {name}: {len(cells)} cells -> {folder}")
    ok, logs = run_eval_set(tasks, folder, display=display, max_tasks=max_tasks, retry_attempts=retry_attempts)
    by_cell: dict[str, str] = {}
    for lg in logs:
        cell = (lg.eval.metadata or {}).get("cell") or {}
        if isinstance(cell, dict) and cell.get("cell"):
            by_cell[cell["cell"]] = lg.location
    return SweepResult(success=ok, logs=by_cell)
