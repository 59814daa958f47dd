"""`none`: no intervention (the unsteered model)."""

from __future__ import annotations

from interventions.directions import Direction
from interventions.registry import VariantContext, register_variant


@register_variant("none")
def none_variant(ctx: VariantContext) -> Direction | None:
    """No direction: the provider installs no steering hook."""
    return None
