"""`random`: a seeded Gaussian direction in d_model space, rescaled to the own direction's norm.

The generator seed mixes the user seed with the control kind, family and layer (`control_seed`), so controls
at different layers/families are independent but each is reproducible from `seed` alone."""

from __future__ import annotations

from hashlib import sha256

import torch

from interventions.directions import Direction, derived_direction, matched_norm
from interventions.registry import VariantContext, register_variant
from interventions.variants.own import load_own


def control_seed(seed: int, kind: str, family: str, layer: int) -> int:
    """A 63-bit generator seed derived from (seed, kind, family, layer), stable across runs and platforms."""
    digest = sha256(f"emsteer-control:{kind}:{family}:{layer}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seeded_gaussian(d_model: int, seed: int) -> torch.Tensor:
    """A standard Gaussian vector [d_model], float64, from a CPU generator seeded with `seed`."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(d_model, generator=gen, dtype=torch.float64)


def random_control(own: Direction, seed: int, *, family: str, layer: int) -> Direction:
    """Seeded Gaussian with the own direction's norm; metadata (model id, layer, R) carried over from `own`."""
    s = control_seed(seed, "random", family, layer)
    vec = matched_norm(seeded_gaussian(own.width, s), own.norm).float()
    return derived_direction(vec, own, {
        "variant": "random",
        "contrast": "random control: seeded Gaussian rescaled to the own direction's norm",
        "seed": seed,
        "control_seed": s,
        "matched_norm": own.norm,
    })


@register_variant("random", controls="own")
def random_variant(ctx: VariantContext) -> Direction:
    """Random control at the target layer (needs the own direction there for its norm and R)."""
    return random_control(load_own(ctx), ctx.seed, family=ctx.family, layer=ctx.layer)
