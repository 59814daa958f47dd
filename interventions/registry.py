"""Registry of intervention variants: name -> function(VariantContext) -> Direction | None.

Register with `@register_variant("name")` in a module under `interventions/variants/` (one file per variant);
every module there is imported (pkgutil) the first time the registry is queried.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from interventions.directions import Direction, load_direction
from interventions.errors import EmsteerError


@dataclass(frozen=True)
class VariantContext:
    """Everything a variant needs to pick its direction.

    `layer` is the resolved (non-negative) target layer; `donor` names the donor family for `transferred`;
    `model_id`, when set, must equal the `model_id` recorded in the files read."""

    family: str
    run: Path
    layer: int
    n_layers: int
    d_model: int
    seed: int = 0
    donor: str | None = None
    model_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        if not 0 <= self.layer < self.n_layers:
            raise EmsteerError(f"layer {self.layer} is out of range for {self.n_layers} layers (resolve it first)")
        if self.d_model <= 0:
            raise EmsteerError(f"d_model must be positive, got {self.d_model}")


VariantFn = Callable[[VariantContext], "Direction | None"]

_REGISTRY: dict[str, VariantFn] = {}
_DISCOVERED = False


def register_variant(name: str) -> Callable[[VariantFn], VariantFn]:
    """Decorator registering `fn` under `name` (a second, different function under the same name is an error)."""

    def deco(fn: VariantFn) -> VariantFn:
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise EmsteerError(f"variant {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        _REGISTRY[name] = fn
        return fn

    return deco


def discover_variants() -> None:
    """Import every module in `interventions.variants` so their decorators run (idempotent)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    from interventions import variants

    for info in pkgutil.iter_modules(variants.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{variants.__name__}.{info.name}")
    _DISCOVERED = True


def variant_names() -> list[str]:
    """Sorted names of all registered variants."""
    discover_variants()
    return sorted(_REGISTRY)


def get_variant(name: str) -> VariantFn:
    """The function registered under `name`, or an error listing the registered names."""
    discover_variants()
    fn = _REGISTRY.get(name)
    if fn is None:
        raise EmsteerError(f"unknown variant {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return fn


def resolve_variant(name: str, ctx: VariantContext) -> Direction | None:
    """Run variant `name` in `ctx`: the Direction to steer with, or None (no intervention)."""
    return get_variant(name)(ctx)


def require_direction(
    path: Path, command: str, ctx: VariantContext, what: str, expect_layer: int | None = None
) -> Direction:
    """Load a direction file a variant needs, checked against `ctx` (width, model id) and, if given, the layer
    recorded in its metadata. A missing file's error names the path and the command that makes it."""
    if not path.exists():
        raise EmsteerError(f"{what}: missing {path}; make it with `{command}`")
    direction = load_direction(path, expected_width=ctx.d_model, expected_model=ctx.model_id)
    recorded = direction.layer
    if expect_layer is not None and recorded is not None:
        if not -ctx.n_layers <= recorded < ctx.n_layers or recorded % ctx.n_layers != expect_layer:
            raise EmsteerError(f"{what}: {path} records layer {recorded}, expected layer {expect_layer}")
    return direction


def tagged(direction: Direction, variant: str) -> Direction:
    """A copy of `direction` whose metadata names the variant that chose it."""
    return Direction(
        vector=direction.vector,
        metadata={**direction.metadata, "variant": variant},
        sources=dict(direction.sources),
    )
