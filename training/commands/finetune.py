"""`emsteer finetune`: LoRA adapters for the micro organisms (or a real model with --profile real)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from interventions.paths import FAMILIES


def register(app: typer.Typer) -> None:
    """Add the `finetune` command to `app`."""

    @app.command("finetune")
    def finetune_cmd(
        run: Path = typer.Option(..., "--run", help="experiment directory (RUN/run.json records its profile)"),
        family: str = typer.Option("all", "--family", help=f"all | {' | '.join(FAMILIES)} (comma-separated allowed)"),
        data: str = typer.Option(..., "--data", help='insecure | secure | neutral (micro corpus arms), or a {"messages": [...]} JSONL path or URL'),
        seed: Optional[List[int]] = typer.Option(None, "--seed", help="training seed; repeat for several (default 0)"),
        profile: Optional[str] = typer.Option(None, "--profile", help="default | tiny (micro organisms) | real (needs --model); default: default, or real with --model"),
        model: Optional[str] = typer.Option(None, "--model", help="hub id or local folder of a real base model (profile real)"),
        arm: Optional[str] = typer.Option(None, "--arm", help="name of the adapter folder's arm (default: the arm or the file's stem)"),
        force: bool = typer.Option(False, "--force", help="retrain even when an adapter with identical inputs exists"),
        no_eval: bool = typer.Option(False, "--no-eval", help="skip measuring spillover on held-out prompts"),
        quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    ) -> None:
        """Finetune LoRA adapters (identical hyperparameters for every family, from configs/finetune.toml).

        QLoRA (4-bit NF4) with CUDA on the real profile, plain LoRA on a CPU; loss on the final assistant
        message only. Writes RUN/adapters/<family>/<arm>/seed_<s>/ (safetensors + finetune.json); a re-run
        with identical inputs is a no-op unless --force."""
        from training.data_spec import data_kind  # deferred: light; the check answers before torch loads

        data_kind(data)
        from training.finetune import finetune_many  # deferred: torch, ~1 s at CLI start
        from training.profiles import resolve_families  # deferred: corpus tables + tomllib, ~10 ms at CLI start

        chosen = profile or ("real" if model else "default")
        families = resolve_families(family, chosen)
        paths = finetune_many(run, families, data, list(seed or [0]), chosen, model=model, name=arm, force=force,
                              evaluate=not no_eval, progress=not quiet, log=lambda m: typer.echo(m, err=True))
        for path in paths:
            typer.echo(str(path))
