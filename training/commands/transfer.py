"""`emsteer transfer`: ridge maps between families and transferred directions with their controls."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interventions.errors import EmsteerError
from training.run_manifest import require_run


def register(app: typer.Typer) -> None:
    @app.command("transfer")
    def transfer_cmd(
        run: Path = typer.Option(..., "--run", help="experiment directory (needs `emsteer extract` for both families)"),
        src: str = typer.Option(..., "--src", help="donor family, or all"),
        tgt: str = typer.Option(..., "--tgt", help="receiver family, or all (pairs with src == tgt are skipped)"),
        pairing: str = typer.Option("aligned-tokens", "--pairing", help="aligned-tokens | last-token"),
        layer: int = typer.Option(-1, "--layer", help="decoder layer of both families (negative counts from the end)"),
        seed: int = typer.Option(0, "--seed", help="seed of the chat sample, splits and random controls"),
        models: str = typer.Option("base", "--models", help="base (default) | insecure (the run's insecure adapters)"),
        profile: Optional[str] = typer.Option(None, "--profile", help="default | tiny (default: the run's)"),
        n_texts: Optional[int] = typer.Option(None, "--n-texts", min=1, help="shared chats (default 200; tiny 40)"),
        k_random: int = typer.Option(8, "--k-random", min=1, help="transferred-random controls"),
        batch_size: int = typer.Option(16, "--batch-size", min=1),
        force: bool = typer.Option(False, "--force", help="recompute even if the inputs are unchanged"),
    ) -> None:
        """Fit a ridge map from SRC's to TGT's residual stream on shared text and push SRC's own direction
        (and seeded random SRC-space directions) through it into TGT's space."""
        require_run(run)
        from training.artifacts import run_profile  # deferred: torch, ~1 s at CLI start
        from training.profiles import resolve_families  # deferred: corpus tables + tomllib, ~10 ms at CLI start
        from training.transfer import check_pairing, check_transfer_inputs, run_transfer  # deferred: torch, ~1 s

        check_pairing(pairing)
        prof = run_profile(run, profile)
        pairs = [(a, b) for a in resolve_families(src, prof) for b in resolve_families(tgt, prof) if a != b]
        if not pairs:
            raise EmsteerError("no donor -> receiver pair: --src and --tgt name the same single family")
        for a, b in pairs:  # validate every pair before any work
            check_transfer_inputs(run, a, b, profile=prof, layer=layer, seed=seed, models=models)
        log = lambda m: typer.echo(m, err=True)  # noqa: E731
        cache: dict = {}
        for a, b in pairs:
            s = run_transfer(run, a, b, profile=prof, pairing=pairing, layer=layer, seed=seed, models=models,
                             n_texts=n_texts, k_random=k_random, batch_size=batch_size, force=force,
                             state_cache=cache, log=log)
            typer.echo(f"{a} -> {b}\tR2 {s['r2_heldout']:.3f}\tcos {s['cosine_with_own']:+.3f}\t"
                       f"random mean|cos| {s['transferred_random']['mean_abs_cosine']:.3f}\tpairing {s['pairing']}")
