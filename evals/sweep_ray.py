"""Run a grid's cells on a Ray cluster: the same logs in `RUN/logs/<grid>/` and the same report as the local backend.

The cells are grouped (by default one group per model family, so a worker loads a family's base weights once and
shares them between its adapters and variants; `chunk_size` splits a family into smaller groups to spread it over
more GPUs). Each group becomes one Ray task that runs Inspect's own `eval_set` on the group's cells, built by the
same `evals.sweep.cell_task` as the local backend and with the same eval-set options, so the task identities match
and logs from either backend are interchangeable: a cell that already has a successful log (from a local or a Ray
sweep) is skipped, a cell whose files changed runs again, and a failed cell is resumed.

The grouping, the staging folders and the merge of logs are `evals.sweep_groups` (shared with the process-pool
backend).

Assumptions: the run directory (and so `RUN/logs` and `RUN/sweep-staging`) is on storage every Ray node sees at the
same path (NFS, a shared volume; the driver passes absolute paths); `emsteer` and its dependencies are installed on
every node (the same versions: task identities hash the model args, not the code); `$EMSTEER_CACHE` points at
the organisms on every node (the driver forwards its value); one sweep per grid folder at a time.

`ray` is an optional dependency (`pip install -e ".[ray]"`); it is imported only when this backend is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from evals.grid import Cell
from evals.sweep import SweepResult
from evals.sweep_groups import (EVAL_SET_ID_FILE, CellGroup, finish_groups, first_line, group_cells, group_summary, prepare_log_dir,
                                run_group, staging_dir)
from interventions.errors import EmsteerError

__all__ = ["RAY_INSTALL", "EVAL_SET_ID_FILE", "CellGroup", "require_ray", "group_cells", "staging_dir", "gpus_per_group",
           "run_group", "run_cells_ray"]

RAY_INSTALL = 'pip install -e ".[ray]"  (or: pip install "ray[default]>=2.9")'
_FORWARDED_ENV = ("EMSTEER_CACHE", "EMSTEER_SHARED", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                  "OMP_NUM_THREADS", "INSPECT_LOG_FORMAT")

Log = Callable[[str], None]


def require_ray() -> Any:
    """Import `ray`, or stop with one line that gives the install command."""
    try:
        import ray  # deferred: optional dependency (and ~1 s to import); only `--backend ray` needs it
    except ImportError:
        raise EmsteerError(f"--backend ray needs Ray, which is not installed; install it with: {RAY_INSTALL}") from None
    return ray


def gpus_per_group(ray: Any, requested: float | None) -> float:
    """GPUs to request per group task: `requested` when given; otherwise 1 when the cluster reports GPUs (or this
    machine has CUDA), else 0."""
    if requested is not None:
        if requested < 0:
            raise EmsteerError(f"GPUs per task must be >= 0, got {requested}")
        return float(requested)
    if float(ray.cluster_resources().get("GPU", 0)) > 0:
        return 1.0
    return 1.0 if torch.cuda.is_available() else 0.0


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
    run = Path(run).resolve()
    folder, eval_set_id = prepare_log_dir(cells, run, name)
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=display != "none")
        except Exception as err:  # ConnectionError and Ray's own errors: one line
            raise EmsteerError(f"could not {'connect to Ray at ' + address if address else 'start Ray'}: "
                               f"{first_line(err)}") from None
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
            errors.append(f"{group.name}: {first_line(err)}")
            log(f"  {group.name}: failed ({errors[-1]})")
            continue
        results.append(out)
        log(group_summary(group, out))
    return finish_groups(run, name, folder, eval_set_id, results, errors, log)
