"""One entry point for running cells, whatever the backend: `local` (this machine: in this process with one job,
or `jobs` single-thread worker processes) or `ray` (a Ray cluster). Every backend writes the same logs into
`RUN/logs/<name>/`, so a sweep can move between them and a re-run skips what any of them finished."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evals.grid import Cell
from evals.sweep import SweepResult, run_cells
from evals.sweep_groups import run_cells_pool
from evals.sweep_ray import require_ray, run_cells_ray
from interventions.errors import EmsteerError

__all__ = ["BACKENDS", "SweepBackend", "check_backend"]

BACKENDS = ("local", "ray")

Log = Callable[[str], None]


def check_backend(backend: str, jobs: int | None = None, address: str | None = None) -> None:
    """One line for a bad backend choice, before anything runs (Ray's absence included)."""
    if backend not in BACKENDS:
        raise EmsteerError(f"--backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    if jobs is not None and jobs < 1:
        raise EmsteerError(f"--jobs must be at least 1, got {jobs}")
    if address is not None and backend != "ray":
        raise EmsteerError("--address is only used with --backend ray")
    if backend == "ray":
        require_ray()


@dataclass
class SweepBackend:
    """Where and how cells run. `jobs` (local only): 1 runs `eval_set` in this process; more runs one group of
    cells per family on that many single-thread worker processes (`evals.sweep_groups`)."""

    run: Path
    profile: str
    backend: str = "local"
    jobs: int = 1
    display: str = "rich"
    max_tasks: int = 2
    address: str | None = None
    log: Log = print

    def __post_init__(self) -> None:
        check_backend(self.backend, self.jobs, self.address)

    def __call__(self, cells: list[Cell], *, name: str, task_args: dict[str, Any],
                 alphas: dict[str, float]) -> SweepResult:
        """Run `cells` into `RUN/logs/<name>`; finished cells are skipped."""
        if self.backend == "ray":
            return run_cells_ray(cells, self.run, self.profile, name=name, task_args=task_args, alphas=alphas,
                                 address=self.address, display=self.display, max_tasks=self.max_tasks, log=self.log)
        families = {c.family for c in cells}
        if self.jobs > 1 and len(families) > 1:
            return run_cells_pool(cells, self.run, self.profile, name=name, task_args=task_args, alphas=alphas,
                                  jobs=self.jobs, max_tasks=self.max_tasks, log=self.log)
        return run_cells(cells, self.run, self.profile, name=name, task_args=task_args, alphas=alphas,
                         display=self.display, max_tasks=self.max_tasks, log=self.log)
