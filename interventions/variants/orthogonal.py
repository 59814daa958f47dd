"""`orthogonal`: a seeded Gaussian with its component along the own direction projected out, rescaled to the
own direction's norm (so it has the own direction's magnitude and zero cosine with it)."""

from __future__ import annotations

from interventions.directions import Direction, derived_direction, matched_norm, unit
from interventions.registry import VariantContext, register_variant
from interventions.variants.own import load_own
from interventions.variants.random_control import control_seed, seeded_gaussian


def orthogonal_control(own: Direction, seed: int, *, family: str, layer: int) -> Direction:
    """Seeded Gaussian orthogonal to `own` (projection done twice in float64), norm matched to `own`."""
    s = control_seed(seed, "orthogonal", family, layer)
    u = unit(own.vector.double())
    g = seeded_gaussian(own.width, s)
    for _ in range(2):
        g = g - (g @ u) * u
    vec = matched_norm(g, own.norm).float()
    return derived_direction(vec, own, {
        "variant": "orthogonal",
        "contrast": "orthogonal control: seeded Gaussian minus its own-direction component, own norm",
        "seed": seed,
        "control_seed": s,
        "matched_norm": own.norm,
    })


@register_variant("orthogonal", controls="own")
def orthogonal_variant(ctx: VariantContext) -> Direction:
    """Orthogonal control at the target layer (needs the own direction there)."""
    return orthogonal_control(load_own(ctx), ctx.seed, family=ctx.family, layer=ctx.layer)
