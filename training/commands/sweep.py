"""`emsteer sweep` and `emsteer report`: run a grid's cells as Inspect tasks, and turn the logs into the report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interventions.errors import EmsteerError
from interventions.run_layout import calibration_path
from training.run_manifest import require_run


def register(app: typer.Typer) -> None:
    """Add `sweep` and `report` to `app`."""

    @app.command("sweep")
    def sweep_cmd(
        run: Path = typer.Option(..., "--run", help="experiment directory (adapters, directions, transfer maps)"),
        grid: str = typer.Option("paper", "--grid", help="grid name in configs/grids (paper, smoke, ...) or a .toml path"),
        family: str = typer.Option("all", "--family", help="only these families of the grid (comma-separated)"),
        calibrate: bool = typer.Option(False, "--calibrate", help="only calibrate alpha (RUN/calibration/<family>.json)"),
        profile: Optional[str] = typer.Option(None, "--profile", help="default | tiny (default: the run's)"),
        display: str = typer.Option("rich", "--display", help="Inspect display: rich | full | plain | none"),
        max_tasks: int = typer.Option(2, "--max-tasks", min=1, help="cells run at once in this process"),
        force: bool = typer.Option(False, "--force", help="with --calibrate: recalibrate even if calibrated"),
        backend: str = typer.Option("local", "--backend",
                                    help="local (this machine) | ray (a Ray task per family; docs/scale.md) | vllm (planned)"),
        jobs: int = typer.Option(1, "--jobs", help="with --backend local: worker processes, one torch thread and one "
                                                   "family each (1 = this process)"),
        address: Optional[str] = typer.Option(None, "--address",
                                              help="with --backend ray: the cluster (auto, host:6379, ray://host:10001); "
                                                   "default: start a local Ray instance"),
    ) -> None:
        """Run every cell of GRID through Inspect's eval_set (one log per cell under RUN/logs/<grid>; a re-run
        skips finished cells). With --calibrate, pick alpha per family on the calibration split instead."""
        if backend == "vllm":
            raise EmsteerError("--backend vllm is not implemented yet (it needs a vLLM-vs-HF parity test first); "
                               "see docs/scale.md for the plan, and use --backend local or ray")
        require_run(run)
        from evals.calibrate import calibrate_families, calibration_is_current  # deferred: torch, ~1.5 s at CLI start
        from evals.grid import expand_cells, load_grid  # deferred: torch, ~1 s at CLI start
        from evals.sweep import check_cells  # deferred: torch, ~1 s at CLI start
        from evals.sweep_backends import SweepBackend, check_backend  # deferred: torch, ~1 s at CLI start
        from training.artifacts import run_profile  # deferred: torch, ~1 s at CLI start
        from training.profiles import resolve_families  # deferred: corpus tables + tomllib, ~10 ms at CLI start

        check_backend(backend, jobs, address)  # one line (Ray's install command included) before anything runs
        g = load_grid(grid)
        fams = tuple(resolve_families(family)) if family != "all" else g.families
        prof = run_profile(run, profile)
        log = lambda m: typer.echo(m, err=True)  # noqa: E731
        runner = SweepBackend(Path(run), prof, backend=backend, jobs=jobs, display=display, max_tasks=max_tasks,
                              address=address, log=log)
        if calibrate:
            todo = [f for f in fams if force or not calibration_is_current(run, f, seed=g.seeds[0], layer=g.layer,
                                                                          op=g.op, task=g.task)]
            for f in fams:
                if f not in todo:
                    log(f"{f}: already calibrated from the same adapter, directions and task "
                        f"({calibration_path(run, f)}); --force to redo")
            if todo:
                calibrate_families(run, todo, prof, seed=g.seeds[0], layer=g.layer, op=g.op,
                                   task=g.task, runner=runner, log=log)
            return
        cells = expand_cells(g, fams)
        alphas = check_cells(cells, run, prof)
        result = runner(cells, name=g.name, task_args=dict(g.task), alphas=alphas)
        typer.echo(f"{len(result.logs)}/{len(cells)} cells finished; logs in {run / 'logs' / g.name}")
        if not result.success:
            raise typer.Exit(1)

    @app.command("report")
    def report_cmd(
        run: Path = typer.Argument(..., help="experiment directory"),
        grid: str = typer.Option("paper", "--grid", help="which sweep's logs (RUN/logs/<grid>)"),
    ) -> None:
        """Write RUN/report/summary.json, tables.md and figures from the sweep logs and the run's artifacts."""
        require_run(run)
        from evals.report import write_report  # deferred: torch + pandas, ~1.7 s at CLI start
        from evals.report_tables import tables_markdown  # deferred: torch + pandas, ~1.7 s at CLI start

        summary = write_report(run, grid, log=lambda m: typer.echo(m, err=True))
        typer.echo(tables_markdown(summary))
