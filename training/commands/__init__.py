"""CLI command modules: each module here defines `register(app: typer.Typer) -> None` and is picked up
by `training.cli` automatically, so a new command is one new file."""

from __future__ import annotations

import importlib
import pkgutil

import typer


def register_all(app: typer.Typer) -> None:
    """Import every module in this package and let it add its commands to `app`."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(app)
