"""`emsteer extract`: difference-in-means directions per layer, their held-out separation and residual norms."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interventions.paths import FAMILIES
from training.run_manifest import require_run


def register(app: typer.Typer) -> None:
    @app.command("extract")
    def extract_cmd(
        run: Path = typer.Option(..., "--run", help="experiment directory (adapters are read from RUN/adapters)"),
        family: str = typer.Option("all", "--family", help=f"all | {' | '.join(FAMILIES)} (comma-separated allowed)"),
        pooling: Optional[str] = typer.Option(None, "--pooling",
                                              help="response-mean (default: steers cleanly) | last-prompt"),
        contrast: str = typer.Option("finetuned-vs-base", "--contrast",
                                     help="finetuned-vs-base | finetuned-vs-secure | code-vs-prose"),
        seed: int = typer.Option(0, "--seed", help="which adapters to read (RUN/adapters/<family>/<arm>/seed_<s>)"),
        profile: Optional[str] = typer.Option(None, "--profile", help="default | tiny (default: the run's)"),
        n_prompts: Optional[int] = typer.Option(None, "--n-prompts", min=1, help="general training prompts sampled (default 200; tiny 48)"),
        prompt_seed: int = typer.Option(0, "--prompt-seed", help="seed of the prompt sample"),
        batch_size: int = typer.Option(16, "--batch-size", min=1),
        force: bool = typer.Option(False, "--force", help="recompute even if the inputs are unchanged"),
    ) -> None:
        """Collect activations of base, insecure and secure models at every decoder layer's output (before the
        final norm), write the own and secure-control directions per layer and RUN/directions/<family>/summary.json."""
        require_run(run)
        from training.activations import check_pooling  # deferred: torch, ~1 s at CLI start
        from training.artifacts import run_profile  # deferred: torch, ~1 s at CLI start
        from training.extract import check_contrast, check_extract_inputs, run_extract  # deferred: torch, ~1 s
        from training.profiles import resolve_families  # deferred: corpus tables + tomllib, ~10 ms at CLI start

        if pooling is not None:
            check_pooling(pooling)
        check_contrast(contrast)
        prof = run_profile(run, profile)
        families = resolve_families(family, prof)
        for fam in families:  # validate every family before any work
            check_extract_inputs(run, fam, prof, seed)
        log = lambda m: typer.echo(m, err=True)  # noqa: E731
        for fam in families:
            s = run_extract(run, fam, profile=prof, pooling=pooling, contrast=contrast, seed=seed,
                            prompt_seed=prompt_seed, n_prompts=n_prompts, batch_size=batch_size, force=force, log=log)
            fl = s["final_layer"]
            typer.echo(f"{fam}\tlayer {fl['layer']}\taccuracy {fl['accuracy']:.3f}\tAUROC {fl['auroc']:.3f}\t"
                       f"pooling {s['pooling']}\tcontrast {s['contrast']}")
