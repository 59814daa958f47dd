"""`emsteer controls`: materialise and summarise the matched-magnitude controls of a family."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interventions.errors import EmsteerError
from interventions.paths import FAMILIES
from training.run_manifest import require_run


def register(app: typer.Typer) -> None:
    @app.command("controls")
    def controls_cmd(
        run: Path = typer.Option(..., "--run", help="experiment directory (needs `emsteer extract` first)"),
        family: str = typer.Option("all", "--family", help=f"all | {' | '.join(FAMILIES)} (comma-separated allowed)"),
        layer: int = typer.Option(-1, "--layer", help="target layer (negative counts from the end)"),
        seeds: str = typer.Option("0", "--seed", help="control seed(s), comma-separated"),
        alpha: Optional[float] = typer.Option(None, "--alpha",
                                              help="perturbation in units of R (default: the calibrated alpha in "
                                                   "RUN/calibration/<family>.json, written by `emsteer sweep "
                                                   "--calibrate`; an error when it is missing)"),
        force: bool = typer.Option(False, "--force", help="rewrite even if unchanged"),
    ) -> None:
        """Resolve random / orthogonal / wrong_layer / secure_control for each seed, write them to
        RUN/controls/<family>/ and summarise norms, cosines with the own direction and the shared alpha * R."""
        require_run(run)
        from training.controls import run_controls  # deferred: torch, ~1.5 s at CLI start
        from training.profiles import resolve_families  # deferred: corpus tables + tomllib, ~10 ms at CLI start

        families = resolve_families(family)
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise EmsteerError(f"--seed must be integers separated by commas, got {seeds!r}") from None
        if not seed_list:
            raise EmsteerError("--seed needs at least one seed")
        log = lambda m: typer.echo(m, err=True)  # noqa: E731
        for fam in families:
            s = run_controls(run, fam, layer=layer, seeds=seed_list, alpha=alpha, force=force, log=log)
            for cell in s["cells"]:
                if cell["seed"] in seed_list:
                    parts = [f"{n} cos {c['cosine_with_own']:+.3f}" for n, c in cell["controls"].items()]
                    typer.echo(f"{fam}\tlayer {cell['layer']}\tseed {cell['seed']}\talpha*R {cell['magnitude']:.4g}\t"
                               + "\t".join(parts))
