"""`own`: the family's own direction (insecure finetune vs base) at the target layer."""

from __future__ import annotations

from interventions.directions import Direction
from interventions.registry import VariantContext, register_variant, require_direction, tagged
from interventions.run_layout import extract_command, own_direction_path


def load_own(ctx: VariantContext, layer: int | None = None) -> Direction:
    """The own direction file at `layer` (default: the target layer), validated against `ctx`."""
    layer = ctx.layer if layer is None else layer
    path = own_direction_path(ctx.run, ctx.family, layer)
    return require_direction(
        path, extract_command(ctx.run, ctx.family), ctx, f"own direction of {ctx.family} at layer {layer}", layer
    )


@register_variant("own", file_backed=True)
def own_variant(ctx: VariantContext) -> Direction:
    """RUN/directions/<family>/own/layer_<layer>.safetensors."""
    return tagged(load_own(ctx), "own")
