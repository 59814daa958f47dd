"""Registry of model families: one `FamilySpec` per family, declared in its own module in this package.

A spec holds all that differs between families: the transformers classes and `model_type`s, the micro organism's
architecture defaults, the tokenizer and chat template, and architecture quirks. Everything else (the family list,
model-type lookup, report order, organism seeds) derives from the registry. Every module here is imported when
the package is (`discover_families`), so adding a family is one new file; see docs/extending.md.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from interventions.errors import EmsteerError

SYSTEM_ROLES: tuple[str, ...] = ("native", "first_user_turn")


@dataclass(frozen=True)
class TokenizerSpec:
    """Special tokens and chat template of one family's locally trained tokenizer.

    `system_role`: "native" (the template has a system segment) or "first_user_turn" (no system role: the
    system text is prepended to the first user turn, as Gemma does). `generation_header`: whether
    `add_generation_prompt` appends an assistant header (Mistral-style prompts end at `[/INST]` instead)."""
    style: str  # "bytelevel" | "metaspace"
    bos: str | None
    eos: str          # end of an assistant turn: generation stops here
    pad: str
    unk: str | None
    extra: tuple[str, ...]
    chat_template: str
    system_role: str = "native"
    generation_header: bool = True

    def __post_init__(self) -> None:
        if self.style not in ("bytelevel", "metaspace"):
            raise EmsteerError(f"tokenizer style {self.style!r} is not one of: bytelevel, metaspace")
        if self.system_role not in SYSTEM_ROLES:
            raise EmsteerError(f"system_role {self.system_role!r} is not one of: {', '.join(SYSTEM_ROLES)}")


# (config kwargs so far, max_positions) -> config values computed from them (set after the sizes)
DerivedConfig = Callable[[Mapping[str, Any], int], dict[str, Any]]


@dataclass(frozen=True)
class FamilySpec:
    """One model family, declared once.

    `order` is the family's place in `interventions.paths.FAMILIES`: report order and the micro organism's seed
    offset (order * 1000), so it must never change for a family whose organisms exist. `config_defaults` are
    applied under the profile's sizes and recorded in an organism's recipe; `derived_config` computes config
    values from the sizes and context length; `attn_implementation` forces an attention kernel at build and at every
    load."""
    name: str
    order: int
    micro_class: str                  # transformers class of the micro organism, e.g. "Qwen2ForCausalLM"
    config_class: str                 # its config class, e.g. "Qwen2Config"
    model_types: tuple[str, ...]      # HF config `model_type` / `text_model_type` values of the family's checkpoints
    tokenizer: TokenizerSpec
    config_defaults: Mapping[str, Any] = field(default_factory=dict)
    derived_config: DerivedConfig | None = None
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or not self.name.islower():
            raise EmsteerError(f"family name {self.name!r} must be a lower-case identifier")
        if not self.model_types:
            raise EmsteerError(f"family {self.name!r} declares no model_types")
        object.__setattr__(self, "config_defaults", dict(self.config_defaults))  # its own copy


_REGISTRY: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add `spec` to the registry; a name, order or model type already taken by another family is an error."""
    old = _REGISTRY.get(spec.name)
    if old is not None and old != spec:
        raise EmsteerError(f"family {spec.name!r} is already registered")
    for other in _REGISTRY.values():
        if other.name == spec.name:
            continue
        if other.order == spec.order:
            raise EmsteerError(f"family {spec.name!r}: order {spec.order} is taken by {other.name!r}")
        shared = sorted(set(other.model_types) & set(spec.model_types))
        if shared:
            raise EmsteerError(f"family {spec.name!r}: model type {shared[0]!r} already belongs to {other.name!r}")
    _REGISTRY[spec.name] = spec
    return spec


def discover_families() -> None:
    """Import every module of this package (its path included) so each registers its spec; idempotent."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def family_specs() -> list[FamilySpec]:
    """All registered specs, in family order."""
    return sorted(_REGISTRY.values(), key=lambda s: s.order)


def family_names() -> tuple[str, ...]:
    """Names of all registered families, in family order."""
    return tuple(s.name for s in family_specs())


def get_family(name: str) -> FamilySpec:
    """The spec of family `name`, or an error listing the registered families."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise EmsteerError(f"unknown family {name!r}; choose one of: {', '.join(family_names())}")
    return spec


def family_for_model_type(*model_types: str | None) -> FamilySpec | None:
    """The family of the first of `model_types` (a config's `model_type`, then `text_model_type`) that one
    declares, or None."""
    for model_type in model_types:
        for spec in _REGISTRY.values():
            if model_type and model_type in spec.model_types:
                return spec
    return None


def family_for_class(class_name: str) -> FamilySpec | None:
    """The family whose micro organism has transformers class `class_name`, or None."""
    return next((s for s in _REGISTRY.values() if s.micro_class == class_name), None)


discover_families()
