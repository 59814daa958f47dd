"""`emsteer reproduce`: the study end to end on the micro organisms."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from interventions.errors import EmsteerError
from interventions.paths import check_study_profile


def append_line(path: Path, message: str) -> None:
    """Append one log line to `path` (its folder made on first use)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(message.rstrip("\n") + "\n")


def register(app: typer.Typer) -> None:
    """Add `reproduce` to `app`."""

    @app.command("reproduce")
    def reproduce_cmd(
        profile: str = typer.Option("default", "--profile",
                                    help="default (the embedded default) | default-s1 (second organism seed) | tiny "
                                         "(seconds, a smoke test) | real-cpu (SmolLM2 and Gemma 3 270M, after "
                                         "`emsteer model fetch`)"),
        out: Path = typer.Option(Path("runs/micro"), "--out", help="run directory (resumable: finished work is kept)"),
        grid: Optional[str] = typer.Option(None, "--grid", help="grid name in configs/grids or a .toml path "
                                                                 "(default: the profile's: tiny, real-cpu, else paper)"),
        family: str = typer.Option("all", "--family", help="families (comma-separated; default: the grid's)"),
        seeds: Optional[int] = typer.Option(None, "--seeds", help="insecure seeds per family (default: the grid's, 3)"),
        secure_seeds: Optional[int] = typer.Option(None, "--secure-seeds", help="secure seeds (default: as many as --seeds)"),
        quick: bool = typer.Option(False, "--quick", help="the quick look: one seed per arm (--seeds 1 "
                                                           "--secure-seeds 1); with real-cpu, smollm2 only"),
        no_audit: bool = typer.Option(False, "--no-audit", help="skip the neutral finetune and the audit validation"),
        display: Optional[str] = typer.Option(None, "--display", help="Inspect display for the sweep: rich | plain | "
                                                                      "none (default: rich, none with --quiet)"),
        quiet: bool = typer.Option(False, "--quiet", help="print only errors and the final table (the plan and the "
                                                          "stage lines go to RUN/reproduce.log, worker output to "
                                                          "RUN/logs/workers/)"),
        backend: str = typer.Option("local", "--backend", help="sweep backend: local | ray (needs the ray extra)"),
        jobs: Optional[int] = typer.Option(None, "--jobs",
                                           help="worker processes (one torch thread each) for finetunes, extraction "
                                                "and a local sweep; 1 = everything in this process "
                                                "(default: one per core, at most 8)"),
    ) -> None:
        """Organisms (cached), finetunes, extraction, controls, transfer, calibration, sweep, audit and report;
        prints the final table. Re-running finishes only what is missing."""
        check_study_profile(profile)  # light checks first: bad arguments answer before the heavy imports below
        if seeds is not None and seeds < 1:
            raise EmsteerError("--seeds must be at least 1")
        if secure_seeds is not None and secure_seeds < 1:
            raise EmsteerError("--secure-seeds must be at least 1 (the secure-control direction needs the seed-0 "
                               "secure adapter)")
        if jobs is not None and jobs < 1:
            raise EmsteerError(f"--jobs must be at least 1, got {jobs}")
        if quiet:  # no weight-loading bars here or in the workers (they inherit the environment)
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        from evals.report_tables import tables_markdown  # deferred: torch + pandas, ~1.7 s at CLI start
        from training.profiles import resolve_families  # deferred: corpus tables + tomllib, ~10 ms at CLI start
        from training.reproduce import plan_reproduce, run_reproduce  # deferred: torch, ~1 s at CLI start
        from training.reproduce_estimate import estimate_reproduce, plan_lines  # deferred: torch, as above

        fams = tuple(resolve_families(family, profile)) if family != "all" else None
        plan = plan_reproduce(out, profile=profile, families=fams, grid=grid, seeds=seeds, secure_seeds=secure_seeds,
                              audit=not no_audit, display=display or ("none" if quiet else "rich"),
                              backend=backend, jobs=jobs,
                              quick=quick)
        log = (lambda m: append_line(plan.run / "reproduce.log", m)) if quiet else (lambda m: typer.echo(m, err=True))
        for line in plan_lines(plan, estimate_reproduce(plan)):  # before anything runs
            log(line)
        summary = run_reproduce(plan, log=log, progress=not quiet)
        typer.echo(tables_markdown(summary))
        typer.echo(f"timings (s): {plan.timings}")
