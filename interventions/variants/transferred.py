"""`transferred`: a donor family's direction mapped into this (receiver) family's space by `emsteer transfer`.

The donor comes from `VariantContext.donor`. If the file records no mean residual norm R, R is taken from the
receiver's own direction at the target layer when that file exists."""

from __future__ import annotations

from interventions.directions import KEY_R, Direction
from interventions.errors import EmsteerError
from interventions.registry import VariantContext, register_variant, require_direction, tagged
from interventions.run_layout import own_direction_path, transfer_command, transferred_direction_path
from interventions.variants.own import load_own


@register_variant("transferred", file_backed=True, transfer=True)
def transferred_variant(ctx: VariantContext) -> Direction:
    """RUN/transfer/<donor>_to_<family>/direction.safetensors (width must be the receiver's d_model)."""
    if not ctx.donor:
        raise EmsteerError("variant 'transferred' needs a donor family (the `donor` key)")
    path = transferred_direction_path(ctx.run, ctx.donor, ctx.family)
    what = f"transferred direction {ctx.donor} -> {ctx.family}"
    direction = require_direction(path, transfer_command(ctx.run, ctx.donor, ctx.family), ctx, what, ctx.layer)
    direction = tagged(direction, "transferred")
    direction.metadata["donor"] = ctx.donor
    if direction.mean_residual_norm is None and own_direction_path(ctx.run, ctx.family, ctx.layer).exists():
        own = load_own(ctx)
        if own.mean_residual_norm is not None:
            direction.metadata[KEY_R] = repr(own.mean_residual_norm)
            direction.sources.update(own.sources)
    return direction
