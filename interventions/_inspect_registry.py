"""Inspect entry point (`[project.entry-points.inspect_ai]`): importing this registers the `steer` provider.

The provider module (torch, transformers) is imported only when a `steer/` model is built, so every other
Inspect command stays fast."""

from __future__ import annotations

from inspect_ai.model import ModelAPI, modelapi


@modelapi(name="steer")
def steer() -> type[ModelAPI]:
    """`--model steer/<preset | path | hub id>`: see interventions/provider.py and docs/steer-provider.md."""
    from interventions.errors import install_inspect_cli_hook
    from interventions.provider import SteerAPI

    install_inspect_cli_hook()  # bad -M input: one line on stderr, not a traceback
    return SteerAPI
