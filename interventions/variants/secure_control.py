"""`secure_control`: the direction separating the SECURE finetune from the base (same recipe, no insecurity)."""

from __future__ import annotations

from interventions.directions import Direction
from interventions.registry import VariantContext, register_variant, require_direction, tagged
from interventions.run_layout import extract_command, secure_direction_path


@register_variant("secure_control", file_backed=True, controls="own")
def secure_control_variant(ctx: VariantContext) -> Direction:
    """RUN/directions/<family>/secure/layer_<layer>.safetensors."""
    path = secure_direction_path(ctx.run, ctx.family, ctx.layer)
    what = f"secure-control direction of {ctx.family} at layer {ctx.layer}"
    return tagged(require_direction(path, extract_command(ctx.run, ctx.family), ctx, what, ctx.layer), "secure_control")
