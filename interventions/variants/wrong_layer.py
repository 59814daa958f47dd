"""`wrong_layer`: the own direction from another layer (the middle one, n_layers // 2) applied at the target
layer, rescaled to the target layer's own-direction norm; R and layer metadata are the target layer's."""

from __future__ import annotations

from interventions.directions import Direction, derived_direction, matched_norm
from interventions.errors import EmsteerError
from interventions.registry import VariantContext, register_variant
from interventions.variants.own import load_own


def wrong_layer_source(layer: int, n_layers: int) -> int:
    """The layer whose own direction is borrowed: n_layers // 2, or its lower (else upper) neighbour when that
    is the target layer itself."""
    mid = n_layers // 2
    if mid != layer:
        return mid
    if mid - 1 >= 0:
        return mid - 1
    if mid + 1 < n_layers:
        return mid + 1
    raise EmsteerError(f"wrong_layer needs at least 2 decoder layers, the model has {n_layers}")


@register_variant("wrong_layer", controls="own")
def wrong_layer_variant(ctx: VariantContext) -> Direction:
    """Own direction of layer `wrong_layer_source(...)`, norm-matched to the target layer's own direction."""
    src = wrong_layer_source(ctx.layer, ctx.n_layers)
    target = load_own(ctx)
    borrowed = load_own(ctx, layer=src)
    vec = matched_norm(borrowed.vector.double(), target.norm).float()
    return derived_direction(vec, target, {
        "variant": "wrong_layer",
        "contrast": f"wrong-layer control: own direction of layer {src} applied at layer {ctx.layer}",
        "source_layer": src,
        "source_norm": borrowed.norm,
        "matched_norm": target.norm,
    }, extra_sources=borrowed.sources)
