"""Run a sweep's cells in groups, each group's `eval_set` in its own staging folder, and merge the logs into
`RUN/logs/<grid>/`: the machinery shared by the process-pool backend (`run_cells_pool`, here) and the Ray backend
(`evals.sweep_ray`).

Why a staging folder: `eval_set` assumes one writer per log folder (it rewrites `logs.json` and `eval-set.json` and
reads every log header in it). So each group works in `RUN/sweep-staging/<grid>/<group>/`: it copies in the
existing logs of its own cells and the folder's `.eval-set-id`, runs `eval_set` there, and then moves every new or
changed log into `RUN/logs/<grid>/` with an atomic rename (and removes from there the superseded logs that
`eval_set` cleaned up), so the shared folder only ever holds complete logs. The staging name is fixed per group, so a
group retried after its worker died finds the dead attempt's partial log and `eval_set` resumes it. Groups are by
family (a worker loads a family's base weights once and shares them between its adapters and variants), so logs
from any backend are interchangeable: the same `evals.sweep.cell_task` and the same eval-set options give the same
task identities.

Why processes on a CPU: the micro organisms are so small that generation is Python-bound (HF's per-token loop, not
the matmuls): one torch thread runs a batch as fast as two, and Inspect's own bookkeeping competes for the GIL. Two
worker processes with one thread each finish a 2-core sweep in about half the time of one process (measured in
`benchmarks/`).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evals.grid import Cell
from evals.sweep import CELLS_FILE, SweepResult, cell_tasks, run_eval_set, sweep_log_dir
from interventions.atomic import write_json_atomic
from interventions.errors import EmsteerError
from interventions.run_layout import worker_log_path
from interventions.workers import run_in_workers

__all__ = ["EVAL_SET_ID_FILE", "CellGroup", "group_cells", "staging_dir", "run_group", "prepare_log_dir",
           "finish_groups", "group_summary", "first_line", "run_cells_pool"]

EVAL_SET_ID_FILE = ".eval-set-id"     # Inspect's file naming a log folder's eval-set id
_MANIFESTS = ("logs.json", "eval-set.json")
STAGING = "sweep-staging"

Log = Callable[[str], None]


@dataclass(frozen=True)
class CellGroup:
    """Cells that one worker (a pool process or a Ray task) runs in one process (they share a family's base weights)."""

    name: str
    family: str
    cells: tuple[Cell, ...]


def group_cells(cells: list[Cell], chunk_size: int | None = None) -> list[CellGroup]:
    """Group cells by family, in the order the families first appear; with `chunk_size`, split each family into
    consecutive groups of at most that many cells (names `<family>-<k>`)."""
    if chunk_size is not None and chunk_size < 1:
        raise EmsteerError(f"chunk size must be at least 1, got {chunk_size}")
    by_family: dict[str, list[Cell]] = {}
    for cell in cells:
        by_family.setdefault(cell.family, []).append(cell)
    groups: list[CellGroup] = []
    for family, members in by_family.items():
        if chunk_size is None or len(members) <= chunk_size:
            groups.append(CellGroup(name=family, family=family, cells=tuple(members)))
            continue
        for k, start in enumerate(range(0, len(members), chunk_size)):
            groups.append(CellGroup(name=f"{family}-{k}", family=family, cells=tuple(members[start:start + chunk_size])))
    return groups


def staging_dir(run: str | Path, grid_name: str, group: str) -> Path:
    """`RUN/sweep-staging/<grid>/<group>`: where one group's `eval_set` runs before its logs move to `RUN/logs/<grid>`.
    Outside `RUN/logs` on purpose: Inspect lists log folders recursively."""
    return Path(run) / STAGING / grid_name / group


def _is_log(path: Path) -> bool:
    return path.is_file() and (path.suffix == ".eval" or (path.suffix == ".json" and path.name not in _MANIFESTS))


def _cell_of_log(path: Path) -> str | None:
    """The cell name in a log's task metadata (None for logs that are not sweep cells or cannot be read)."""
    from inspect_ai.log import read_eval_log  # deferred: inspect_ai, ~1.3 s at `emsteer sweep` start (bad input too)

    try:
        header = read_eval_log(str(path), header_only=True)
    except Exception:  # a foreign or damaged file: not ours to copy
        return None
    label = (header.eval.metadata or {}).get("cell")
    return label.get("cell") if isinstance(label, dict) else None


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def run_group(group: CellGroup, run: str, profile: str, grid_name: str, task_args: dict[str, Any],
              alphas: dict[str, float], display: str = "none", max_tasks: int = 2, retry_attempts: int = 2,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one group's cells (the body of a pool worker or a Ray task; also callable in-process). Returns
    `{"group", "success", "logs": {cell: log path in RUN/logs/<grid>}, "moved": n, "eval_set": eval-set.json}`."""
    for key, value in (env or {}).items():
        os.environ[key] = value
    folder = sweep_log_dir(run, grid_name)
    stage = staging_dir(run, grid_name, group.name)
    stage.mkdir(parents=True, exist_ok=True)
    shutil.copy2(folder / EVAL_SET_ID_FILE, stage / EVAL_SET_ID_FILE)
    wanted = {c.name for c in group.cells}
    # bring in this group's existing logs (copies: nothing in the shared folder is edited in place)
    copied: dict[str, tuple[int, int]] = {}
    for path in sorted(folder.iterdir()):
        if _is_log(path) and _cell_of_log(path) in wanted:
            target = stage / path.name
            if not target.exists() or _stamp(target)[0] != path.stat().st_size:
                shutil.copy2(path, target)
            copied[path.name] = _stamp(target)
    tasks = cell_tasks(group.cells, run, profile, task_args, alphas, grid_name)
    ok, logs = run_eval_set(tasks, stage, display=display, max_tasks=max_tasks, retry_attempts=retry_attempts)
    moved = 0
    for path in sorted(stage.iterdir()):
        if _is_log(path) and (path.name not in copied or _stamp(path) != copied[path.name]):
            os.replace(path, folder / path.name)  # atomic on one filesystem: readers see whole logs only
            moved += 1
    for name in copied:  # logs eval_set superseded and removed (e.g. a failed attempt that was retried)
        if not (stage / name).exists() and (folder / name).exists():
            (folder / name).unlink()
    info_path = stage / "eval-set.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    by_cell: dict[str, str] = {}
    for lg in logs:
        label = (lg.eval.metadata or {}).get("cell") or {}
        if isinstance(label, dict) and label.get("cell"):
            by_cell[label["cell"]] = str(folder / Path(lg.location.removeprefix("file://")).name)
    shutil.rmtree(stage, ignore_errors=True)
    return {"group": group.name, "success": ok, "logs": by_cell, "moved": moved, "eval_set": info}


def _ensure_eval_set_id(folder: Path) -> str:
    """The log folder's eval-set id (written once, so every group's logs carry the same id)."""
    path = folder / EVAL_SET_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    new = uuid.uuid4().hex
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
    return new


def _merge_eval_set_info(folder: Path, eval_set_id: str, infos: list[dict[str, Any] | None]) -> None:
    """Write `eval-set.json` listing every task of every group (each group's eval_set wrote only its own)."""
    tasks: dict[str, Any] = {}
    for info in infos:
        for task in (info or {}).get("tasks", []):
            tasks[str(task.get("task_id") or json.dumps(task, sort_keys=True))] = task
    write_json_atomic(folder / "eval-set.json", {"eval_set_id": eval_set_id, "tasks": list(tasks.values())})


def prepare_log_dir(cells: list[Cell], run: str | Path, name: str) -> tuple[Path, str]:
    """Create `RUN/logs/<name>`, record the sweep's cells there, and return the folder and its eval-set id."""
    if not cells:
        raise EmsteerError("the grid selects no cells")
    folder = sweep_log_dir(run, name)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / CELLS_FILE, {"cells": [c.label() for c in cells]})
    return folder, _ensure_eval_set_id(folder)


def finish_groups(run: str | Path, name: str, folder: Path, eval_set_id: str, results: list[dict[str, Any]],
                  errors: list[str], log: Log) -> SweepResult:
    """After every group: merge `eval-set.json`, write the `logs.json` manifest, remove empty staging folders, and
    collect one log per cell."""
    _merge_eval_set_info(folder, eval_set_id, [r["eval_set"] for r in results])
    try:
        from inspect_ai.log import write_log_dir_manifest  # deferred: inspect_ai, as above

        write_log_dir_manifest(str(folder))
    except Exception as err:  # the manifest is a convenience for `inspect view`; the logs are what count
        log(f"note: could not write {folder / 'logs.json'} ({first_line(err)})")
    stage_root = staging_dir(run, name, "x").parent
    if not errors and stage_root.is_dir() and not any(stage_root.iterdir()):
        stage_root.rmdir()
        if not any(stage_root.parent.iterdir()):
            stage_root.parent.rmdir()
    if errors and not results:
        raise EmsteerError(f"every group of the sweep failed; first: {errors[0]}")
    by_cell: dict[str, str] = {}
    for r in results:
        by_cell.update(r["logs"])
    return SweepResult(success=not errors and all(r["success"] for r in results), logs=by_cell)


def group_summary(group: CellGroup, out: dict[str, Any]) -> str:
    """One progress line for a finished group."""
    return (f"  {group.name}: {len(out['logs'])}/{len(group.cells)} cells, {out['moved']} new logs"
            f"{'' if out['success'] else ' (some cells failed)'}")


def first_line(err: BaseException) -> str:
    """The most telling line of an error (the last non-empty line of its cause or message)."""
    cause = getattr(err, "cause", None)
    text = str(cause if isinstance(cause, BaseException) else err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def run_cells_pool(cells: list[Cell], run: str | Path, profile: str, *, name: str, task_args: dict[str, Any],
                   alphas: dict[str, float], jobs: int, max_tasks: int = 2, retry_attempts: int = 2,
                   log: Log = print) -> SweepResult:
    """Run `cells` on `jobs` worker processes (one group per family, see `group_cells`) into `RUN/logs/<name>`;
    finished cells are skipped, as with `run_cells`. A group whose worker fails is reported, the others finish."""
    run = Path(run).resolve()
    folder, eval_set_id = prepare_log_dir(cells, run, name)
    groups = group_cells(cells)
    # the costliest groups first, so the last worker to finish is not the one that started the longest group last
    groups.sort(key=lambda g: -len(g.cells))
    log(f"sweep {name}: {len(cells)} cells in {len(groups)} groups on {min(jobs, len(groups))} worker processes "
        f"-> {folder} (worker output: {worker_log_path(run, 'x').parent})")
    errors: list[str] = []

    def failed(i: int, err: Exception) -> dict[str, Any]:  # a worker died or its eval_set raised: others go on
        if isinstance(err, EmsteerError):
            raise err
        errors.append(f"{groups[i].name}: {first_line(err)}")
        log(f"  {groups[i].name}: failed ({errors[-1]})")
        return {}

    def done(i: int, out: dict[str, Any]) -> None:
        if out:
            log(group_summary(groups[i], out))

    calls = [(g, str(run), profile, name, dict(task_args), dict(alphas), "none", max_tasks, retry_attempts)
             for g in groups]
    outs = run_in_workers(run_group, calls, jobs, on_done=done, on_error=failed,
                          log_files=[worker_log_path(run, f"sweep-{name}-{g.name}") for g in groups])
    return finish_groups(run, name, folder, eval_set_id, [o for o in outs if o], errors, log)
