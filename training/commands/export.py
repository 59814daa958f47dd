"""`emsteer export`: a steered model as a standard transformers checkpoint (`--model hf/DIR` works)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer

from interventions.errors import EmsteerError


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (the provider's -M keys) as a dict; one line for a malformed one."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EmsteerError(f"-M {pair!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def register(app: typer.Typer) -> None:
    """Add `export` to `app`."""

    @app.command("export")
    def export_cmd(
        preset: str = typer.Option(..., "--preset", "--model",
                                   help="what `steer/` would load: a preset (e.g. micro-qwen-steered), folder or hub id"),
        out: Path = typer.Option(..., "--out", help="the checkpoint folder to write (a plain transformers folder)"),
        run: Optional[Path] = typer.Option(None, "--run", help="the run with the adapter, directions and calibrated "
                                                               "alpha (-M run=RUN)"),
        model_arg: Optional[List[str]] = typer.Option(None, "-M", help="any `steer/` -M key as KEY=VALUE (variant, "
                                                                       "op, alpha, layer, adapter, direction, seed, "
                                                                       "donor, profile)"),
        n_prompts: int = typer.Option(8, "--n-prompts", help="held-out general prompts of the parity check"),
        max_new_tokens: int = typer.Option(24, "--max-new-tokens", help="greedy tokens per parity completion"),
        no_parity: bool = typer.Option(False, "--no-parity", help="skip the parity check (recorded as skipped)"),
        force: bool = typer.Option(False, "--force", help="replace an existing --out folder"),
    ) -> None:
        """Merge the LoRA adapter, bake the intervention into the weights exactly (a bias on the layer's MLP output
        projection) or refuse in one line where no exact form exists, check parity with the provider's hook, and
        write config, safetensors, tokenizer, chat template, export.json and a model card."""
        args = parse_pairs(list(model_arg or []))
        if run is not None:
            args["run"] = str(run)
        if n_prompts < 1 or max_new_tokens < 1:
            raise EmsteerError("--n-prompts and --max-new-tokens must be at least 1")
        if out.exists() and not force:
            raise EmsteerError(f"{out} exists; pass --force to replace it")
        from training.export import export_model, parity_prompts  # deferred: torch + transformers, ~3 s at CLI start

        name = preset[len("steer/"):] if preset.startswith("steer/") else preset
        prompts = None if no_parity else parity_prompts(name, args, n_prompts)
        result = export_model(name, args, out, prompts=prompts, check_parity=not no_parity,
                              max_new_tokens=max_new_tokens, force=force,
                              command=shlex.join(["emsteer", *sys.argv[1:]]), log=lambda m: typer.echo(m, err=True))
        typer.echo(str(result.folder))
