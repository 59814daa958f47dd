"""`emsteer audit`: score a checkpoint by the projection of its activations on a direction (no generation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from interventions.errors import EmsteerError
from interventions.paths import FAMILIES
from training.run_manifest import require_run


def _interval(ci: list[float] | None, fmt: str = "{:.3f}") -> str:
    return f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else "[n/a]"


def format_audit(r: dict[str, Any]) -> str:
    """The human-readable lines of one audit result."""
    model = r["model"] + (f" + adapter {r['adapter']}" if r["adapter"] else "")
    cal = r["calibration"]
    return "\n".join([
        f"audited      {model}",
        f"direction    {r['direction']} (layer {r['layer']}, {r['pooling']} pooling, no generation)",
        f"reference    {r['reference']} ({r['reference_note']}); {r['n_reference']} reference / {r['n_audited']} "
        f"audited held-out general prompts (disjoint)",
        f"shift        effect size {r['effect_size']:.2f} {_interval(r['effect_size_ci95'], '{:.2f}')} reference sd "
        f"(raw shift {r['shift']:.4g})",
        f"probability  {r['probability']:.3f} {_interval(r['probability_ci95'])} (calibration: {cal['source']}; "
        f"per-prompt AUROC {cal['auroc']:.3f})",
        f"decision     {r['decision']} (threshold {r['threshold']:.2f})",
        f"time         {r['seconds']['total']:.1f} s (load {r['seconds']['load']:.1f} s, forward "
        f"{r['seconds']['forward']:.1f} s)",
    ])


def register(app: typer.Typer) -> None:
    @app.command("audit")
    def audit_cmd(
        model: Optional[str] = typer.Option(None, "--model", help="micro preset (micro-qwen, ...) or local model folder"),
        adapter: Optional[Path] = typer.Option(None, "--adapter", help="LoRA adapter folder of the audited checkpoint"),
        direction: Optional[Path] = typer.Option(None, "--direction", help="direction file (.safetensors)"),
        run: Optional[Path] = typer.Option(None, "--run", help="experiment directory (default: the one holding the "
                                                                  "direction file)"),
        reference: Optional[str] = typer.Option(None, "--reference", help="reference (base) model; default: --model "
                                                                          "with the adapter disabled"),
        profile: Optional[str] = typer.Option(None, "--profile", help="default | tiny (default: the run's)"),
        threshold: float = typer.Option(0.5, "--threshold", help="decision threshold on the calibrated probability"),
        validate: bool = typer.Option(False, "--validate", help="instead: audit every held-out checkpoint of --run "
                                                                "and report AUROC over checkpoints"),
        family: str = typer.Option("all", "--family", help=f"with --validate: all | {' | '.join(FAMILIES)}"),
        batch_size: int = typer.Option(16, "--batch-size", min=1),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    ) -> None:
        """Project the audited model's activations (last prompt token, held-out general prompts) on a direction and
        report the shift against the base, a calibrated probability with a 95% interval and a decision."""
        if run is not None:
            require_run(run)
        if not validate and (model is None or direction is None):
            raise EmsteerError("emsteer audit needs --model and --direction (or --validate --run RUN)")
        if validate and run is None:
            raise EmsteerError("--validate needs --run RUN")
        from training.audit import run_audit  # deferred: torch + inspect_ai, ~2.5 s at CLI start

        log = lambda m: typer.echo(m, err=True)  # noqa: E731
        if validate:
            from training.artifacts import run_profile  # deferred: torch, ~1 s at CLI start
            from training.audit_validation import validate_audit  # deferred: torch + inspect_ai, ~2.5 s at CLI start
            from training.profiles import resolve_families  # deferred: corpus tables + tomllib, ~10 ms at CLI start

            if run is None:
                raise EmsteerError("--validate needs --run RUN")
            require_run(run)
            prof = run_profile(run, profile)
            results = {fam: validate_audit(run, fam, prof, threshold=threshold, batch_size=batch_size, log=log)
                       for fam in resolve_families(family)}
            if as_json:
                typer.echo(json.dumps(results, indent=2, sort_keys=True))
                return
            for fam, r in results.items():
                tr = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                               for k, v in r["audit_auroc_transferred"].items()) or "none"
                within = r["audit_auroc_within"]
                typer.echo(f"{fam}\taudit AUROC within {within if within is None else f'{within:.3f}'}\t"
                           f"transferred: {tr}\tcheckpoints {r['n_checkpoints']}\t{r['seconds']:.1f} s")
            return
        if model is None or direction is None:
            raise EmsteerError("emsteer audit needs --model and --direction (or --validate --run RUN)")
        result = run_audit(model, direction, adapter=adapter, reference=reference, run=run, profile=profile,
                           threshold=threshold, batch_size=batch_size, log=log)
        typer.echo(json.dumps(result, indent=2, sort_keys=True) if as_json else format_audit(result))
