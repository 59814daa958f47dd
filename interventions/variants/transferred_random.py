"""`transferred_random`: the control for `transferred`: a seeded random direction in the DONOR's space pushed
through the same ridge map (made by `emsteer transfer`, one file per index; the variant's seed picks the index),
norm-matched like the transferred direction and carrying the receiver's R."""

from __future__ import annotations

from interventions.directions import Direction
from interventions.errors import EmsteerError
from interventions.registry import VariantContext, register_variant, require_direction, tagged
from interventions.run_layout import transfer_command, transferred_random_path


@register_variant("transferred_random", transfer=True, controls="transferred", repeated_draws=True)
def transferred_random_variant(ctx: VariantContext) -> Direction:
    """RUN/transfer/<donor>_to_<family>/random_<seed>.safetensors."""
    if not ctx.donor:
        raise EmsteerError("variant 'transferred_random' needs a donor family (the `donor` key)")
    path = transferred_random_path(ctx.run, ctx.donor, ctx.family, ctx.seed)
    what = f"transferred-random control {ctx.donor} -> {ctx.family} (index {ctx.seed})"
    direction = tagged(require_direction(path, transfer_command(ctx.run, ctx.donor, ctx.family), ctx, what, ctx.layer),
                       "transferred_random")
    direction.metadata["donor"] = ctx.donor
    return direction
