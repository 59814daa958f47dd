"""Registry of intervention variants: name -> function(VariantContext) -> Direction | None, with its traits.

Register with `@register_variant("name", <traits>)` in a module under `interventions/variants/` (one file per
variant); every module there is imported (pkgutil) the first time the registry is queried. The traits
(`VariantTraits`) say how the rest of the harness treats a variant: which may take `-M direction`, which run in a
grid's transfer cells, which `emsteer controls` writes; those lists are queried here (`variants_with`), never
kept elsewhere.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from interventions import variants
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


@dataclass(frozen=True)
class VariantTraits:
    """How the harness treats a variant.

    `file_backed`: its direction is one file in the run, which `-M direction=FILE` may replace.
    `transfer`: a cross-family variant: it needs a donor family and runs in a grid's [transfer] cells.
    `controls`: the variant it is a matched-magnitude control of (`emsteer controls` writes those of "own").
    `repeated_draws`: each cell is one random draw (index `control_seed`): a grid runs `random_draws` of them
    and the report pools over draws instead of adapter seeds."""
    file_backed: bool = False
    transfer: bool = False
    controls: str | None = None
    repeated_draws: bool = False


_TRAITS: tuple[str, ...] = tuple(f.name for f in fields(VariantTraits))


@dataclass(frozen=True)
class RegisteredVariant:
    """A registered variant: its function and its traits."""
    fn: VariantFn
    traits: VariantTraits


_REGISTRY: dict[str, RegisteredVariant] = {}
_DISCOVERED = False


def register_variant(name: str, *, file_backed: bool = False, transfer: bool = False, controls: str | None = None,
                     repeated_draws: bool = False) -> Callable[[VariantFn], VariantFn]:
    """Decorator registering `fn` under `name` with its traits (see `VariantTraits`); a second, different function
    under the same name is an error."""
    traits = VariantTraits(file_backed=file_backed, transfer=transfer, controls=controls,
                           repeated_draws=repeated_draws)

    def deco(fn: VariantFn) -> VariantFn:
        old = _REGISTRY.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise EmsteerError(f"variant {name!r} is already registered by {old.fn.__module__}.{old.fn.__qualname__}")
        _REGISTRY[name] = RegisteredVariant(fn, traits)
        return fn

    return deco


def discover_variants() -> None:
    """Import every module in `interventions.variants` so their decorators run (idempotent)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    for info in pkgutil.iter_modules(variants.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{variants.__name__}.{info.name}")
    _DISCOVERED = True


def variant_names() -> list[str]:
    """Sorted names of all registered variants."""
    discover_variants()
    return sorted(_REGISTRY)


def _registered(name: str) -> RegisteredVariant:
    discover_variants()
    entry = _REGISTRY.get(name)
    if entry is None:
        raise EmsteerError(f"unknown variant {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return entry


def get_variant(name: str) -> VariantFn:
    """The function registered under `name`, or an error listing the registered names."""
    return _registered(name).fn


def variant_traits(name: str) -> VariantTraits:
    """The traits variant `name` was registered with, or an error listing the registered names."""
    return _registered(name).traits


def variants_with(**traits: object) -> list[str]:
    """Sorted names of the variants whose traits equal every given value, e.g. `variants_with(transfer=True)`."""
    unknown = sorted(set(traits) - set(_TRAITS))
    if unknown:
        raise EmsteerError(f"unknown variant trait {unknown[0]!r}; traits: {', '.join(_TRAITS)}")
    discover_variants()
    return sorted(n for n, e in _REGISTRY.items() if all(getattr(e.traits, k) == v for k, v in traits.items()))


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
