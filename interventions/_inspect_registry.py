"""Inspect entry point (`[project.entry-points.inspect_ai]`): importing this registers the `steer` provider.

The provider module (torch, transformers) is imported only when a `steer/` model is built, so every other
Inspect command stays fast."""

from __future__ import annotations

from inspect_ai.model import ModelAPI, modelapi

from interventions.errors import install_inspect_cli_hook


@modelapi(name="steer")
def steer() -> type[ModelAPI]:
    """`--model steer/<preset | path | hub id>`: see interventions/provider.py and docs/steer-provider.md."""
    from interventions.provider import SteerAPI  # deferred: torch + transformers, ~2 s at every Inspect start

    install_inspect_cli_hook()  # bad -M input: one line on stderr, not a traceback
    return SteerAPI
