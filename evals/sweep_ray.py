"""Run a grid's cells on a Ray cluster: the same logs in `RUN/logs/<grid>/` and the same report as the local backend.

The cells are grouped (by default one group per model family, so a worker loads a family's base weights once and
shares them between its adapters and variants; `chunk_size` splits a family into smaller groups to spread it over
more GPUs). Each group becomes one Ray task that runs Inspect's own `eval_set` on the group's cells, built by the
same `evals.sweep.cell_task` as the local backend and with the same eval-set options, so the task identities match
and logs from either backend are interchangeable: a cell that already has a successful log (from a local or a Ray
sweep) is skipped, a cell whose files changed runs again, and a failed cell is resumed.

Why a staging folder: `eval_set` assumes one writer per log folder (it rewrites `logs.json` and `eval-set.json` and
reads every log header in it). So each group's task works in `RUN/ray-staging/<grid>/<group>/`: it copies in the
existing logs of its own cells and the folder's `.eval-set-id`, runs `eval_set` there, and then moves every new or
changed log into `RUN/logs/<grid>/` with an atomic rename (and removes from there the superseded logs that
`eval_set` cleaned up), so the shared folder only ever holds complete logs. The staging name is fixed per group, so a
task retried after its worker died finds the dead attempt's partial log and `eval_set` resumes it.

Assumptions: the run directory (and so `RUN/logs` and `RUN/ray-staging`) is on storage every Ray node sees at the
same path (NFS, a shared volume; the driver passes absolute paths); `emsteer` and its dependencies are installed on
every node (the same versions: task identities hash the model args, not the code); `$EMSTEER_CACHE` points at
the organisms on every node (the driver forwards its value); one sweep per grid folder at a time.

`ray` is an optional dependency (`pip install -e ".[ray]"`); it is imported only when this backend is used.
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
from evals.sweep import CELLS_FILE, SweepResult, _alpha_of, cell_task, sweep_log_dir
from interventions.atomic import write_json_atomic
from interventions.errors import EmsteerError

__all__ = ["RAY_INSTALL", "EVAL_SET_ID_FILE", "CellGroup", "require_ray", "group_cells", "staging_dir", "gpus_per_group",
           "run_group", "run_cells_ray"]

RAY_INSTALL = 'pip install -e ".[ray]"  (or: pip install "ray[default]>=2.9")'
EVAL_SET_ID_FILE = ".eval-set-id"     # Inspect's file naming a log folder's eval-set id
_MANIFESTS = ("logs.json", "eval-set.json")
_FORWARDED_ENV = ("EMSTEER_CACHE", "EMSTEER_SHARED", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                  "OMP_NUM_THREADS", "INSPECT_LOG_FORMAT")

Log = Callable[[str], None]


def require_ray() -> Any:
    """Import `ray`, or stop with one line that gives the install command."""
    try:
        import ray
    except ImportError:
        raise EmsteerError(f"--backend ray needs Ray, which is not installed; install it with: {RAY_INSTALL}") from None
    return ray


@dataclass(frozen=True)
class CellGroup:
    """Cells that one Ray task runs in one process (they share a family's base weights)."""

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
    """`RUN/ray-staging/<grid>/<group>`: where one group's `eval_set` runs before its logs move to `RUN/logs/<grid>`.
    Outside `RUN/logs` on purpose: Inspect lists log folders recursively."""
    return Path(run) / "ray-staging" / grid_name / group


def gpus_per_group(ray: Any, requested: float | None) -> float:
    """GPUs to request per group task: `requested` when given; otherwise 1 when the cluster reports GPUs (or this
    machine has CUDA), else 0."""
    if requested is not None:
        if requested < 0:
            raise EmsteerError(f"GPUs per task must be >= 0, got {requested}")
        return float(requested)
    if float(ray.cluster_resources().get("GPU", 0)) > 0:
        return 1.0
    try:
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0
    except ImportError:
        return 0.0


def _is_log(path: Path) -> bool:
    return path.is_file() and (path.suffix == ".eval" or (path.suffix == ".json" and path.name not in _MANIFESTS))


def _cell_of_log(path: Path) -> str | None:
    """The cell name in a log's task metadata (None for logs that are not sweep cells or cannot be read)."""
    from inspect_ai.log import read_eval_log

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
    """Run one group's cells (the body of a Ray task; also callable in-process). Returns
    `{"group", "success", "logs": {cell: log path in RUN/logs/<grid>}, "moved": n, "eval_set": eval-set.json}`."""
    from inspect_ai import eval_set

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
    tasks = [cell_task(c, run, profile, task_args, _alpha_of(c, alphas), grid_name) for c in group.cells]
    # the same eval_set options as evals.sweep.run_cells, so task identities (and so skipping) match
    ok, logs = eval_set(tasks, log_dir=str(stage), display=display, max_tasks=max_tasks,
                        retry_attempts=retry_attempts, retry_wait=1, log_dir_allow_dirty=True, score_display=False)
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
    return {"group": group.name, "success": bool(ok), "logs": by_cell, "moved": moved, "eval_set": info}


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


def _first_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None)
    text = str(cause if isinstance(cause, BaseException) else err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def run_cells_ray(cells: list[Cell], run: str | Path, profile: str, *, name: str, task_args: dict[str, Any],
                  alphas: dict[str, float], address: str | None = None, display: str = "none", max_tasks: int = 2,
                  retry_attempts: int = 2, num_gpus: float | None = None, chunk_size: int | None = None,
                  max_retries: int = 3, log: Log = print) -> SweepResult:
    """Run `cells` as Ray tasks (one per group, see `group_cells`) into `RUN/logs/<name>`; finished cells are skipped.

    Connects to `address` (`auto`, `ray://host:10001`, `host:6379`) or, when None and Ray is not yet initialised
    in this process, starts a local instance. Each task asks for 1 CPU and `gpus_per_group` GPUs and is retried up
    to `max_retries` times when its worker or node dies (and on OSError, e.g. a shared-storage hiccup).
    """
    ray = require_ray()
    if not cells:
        raise EmsteerError("the grid selects no cells")
    run = Path(run).resolve()
    folder = sweep_log_dir(run, name)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / CELLS_FILE, {"cells": [c.label() for c in cells]})
    eval_set_id = _ensure_eval_set_id(folder)
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=display != "none")
        except Exception as err:  # ConnectionError and Ray's own errors: one line
            raise EmsteerError(f"could not {'connect to Ray at ' + address if address else 'start Ray'}: "
                               f"{_first_line(err)}") from None
    gpus = gpus_per_group(ray, num_gpus)
    groups = group_cells(cells, chunk_size)
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    worker_display = display if display in ("plain", "none") else "none"
    remote = ray.remote(run_group).options(num_cpus=1, num_gpus=gpus, max_retries=max_retries,
                                           retry_exceptions=[OSError], runtime_env={"env_vars": env} if env else None)
    log(f"sweep {name} on Ray: {len(cells)} cells in {len(groups)} tasks ({gpus:g} GPU each) -> {folder}")
    pending = {remote.remote(g, str(run), profile, name, dict(task_args), dict(alphas), worker_display, max_tasks,
                             retry_attempts): g for g in groups}
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        group = pending.pop(done[0])
        try:
            out = ray.get(done[0])
        except Exception as err:  # RayTaskError (our code failed) or worker/node lost after every retry
            errors.append(f"{group.name}: {_first_line(err)}")
            log(f"  {group.name}: failed ({errors[-1]})")
            continue
        results.append(out)
        log(f"  {group.name}: {len(out['logs'])}/{len(group.cells)} cells, {out['moved']} new logs"
            f"{'' if out['success'] else ' (some cells failed)'}")
    _merge_eval_set_info(folder, eval_set_id, [r["eval_set"] for r in results])
    try:
        from inspect_ai.log import write_log_dir_manifest

        write_log_dir_manifest(str(folder))
    except Exception as err:  # the manifest is a convenience for `inspect view`; the logs are what count
        log(f"note: could not write {folder / 'logs.json'} ({_first_line(err)})")
    stage_root = staging_dir(run, name, "x").parent
    if not errors and stage_root.is_dir() and not any(stage_root.iterdir()):
        stage_root.rmdir()
        if not any(stage_root.parent.iterdir()):
            stage_root.parent.rmdir()
    if errors and not results:
        raise EmsteerError(f"every Ray task failed; first: {errors[0]}")
    by_cell: dict[str, str] = {}
    for r in results:
        by_cell.update(r["logs"])
    return SweepResult(success=not errors and all(r["success"] for r in results), logs=by_cell)
