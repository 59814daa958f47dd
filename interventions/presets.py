"""Model presets of the `steer` provider, read from `configs/presets.toml`.

`find_preset("micro-qwen-steered")` returns the `Preset` (family, micro organism, fetched model or hub id, auto
class, and whether the `-steered` defaults apply), or None when the name is not a preset (the provider then treats it
as a local path or a hub id)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from interventions.errors import EmsteerError
from interventions.paths import FAMILIES, configs_dir

STEERED_SUFFIX = "-steered"
AUTO_CLASSES: tuple[str, ...] = ("AutoModelForCausalLM", "AutoModelForImageTextToText")


@dataclass(frozen=True)
class Preset:
    """One preset: `micro` presets resolve to a built micro organism, `fetched` ones to the folder `emsteer model
    fetch` writes (family optional: None = derived from the config), the others to `hub_id`."""

    name: str
    family: str | None
    micro: bool = False
    hub_id: str | None = None
    fetched: str | None = None
    auto_class: str = "AutoModelForCausalLM"
    steered: bool = False
    steered_defaults: dict[str, Any] = field(default_factory=dict)


def presets_path() -> Path:
    """`configs/presets.toml` (the configs folder follows EMSTEER_CONFIGS)."""
    return configs_dir() / "presets.toml"


@lru_cache(maxsize=4)
def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EmsteerError(f"missing preset file {path}")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise EmsteerError(f"{path} is not valid TOML: {err}") from None


def _table() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    raw = _load(presets_path())
    presets = raw.get("presets", {})
    steered = dict(raw.get("steered", {}))
    if not isinstance(presets, dict) or not presets:
        raise EmsteerError(f"{presets_path()} defines no [presets.<name>] tables")
    return presets, steered


def preset_names() -> list[str]:
    """Every preset name, base forms then `-steered` forms."""
    presets, _ = _table()
    return sorted(presets) + sorted(f"{n}{STEERED_SUFFIX}" for n in presets)


def find_preset(name: str) -> Preset | None:
    """The preset called `name` (with or without `-steered`), or None if there is none."""
    presets, steered = _table()
    base, is_steered = (name[: -len(STEERED_SUFFIX)], True) if name.endswith(STEERED_SUFFIX) else (name, False)
    entry = presets.get(base)
    if entry is None:
        return None
    family = entry.get("family")
    fetched = entry.get("fetched")
    if fetched is not None and not isinstance(fetched, str):
        raise EmsteerError(f"preset {base!r} in {presets_path()}: `fetched` must name a model of configs/models.toml")
    if family not in FAMILIES and not (fetched and family is None):
        raise EmsteerError(f"preset {base!r} in {presets_path()} has unknown family {family!r}; use one of: "
                           f"{', '.join(FAMILIES)}")
    micro = bool(entry.get("micro", False))
    hub_id = entry.get("hub_id")
    if not micro and not fetched and not isinstance(hub_id, str):
        raise EmsteerError(f"preset {base!r} in {presets_path()} needs `micro = true`, `fetched = NAME` or a `hub_id`")
    auto_class = entry.get("auto_class", "AutoModelForCausalLM")
    if auto_class not in AUTO_CLASSES:
        raise EmsteerError(f"preset {base!r}: unknown auto_class {auto_class!r}; use one of: {', '.join(AUTO_CLASSES)}")
    return Preset(name=name, family=family, micro=micro, hub_id=hub_id, fetched=fetched, auto_class=auto_class,
                  steered=is_steered, steered_defaults=steered if is_steered else {})
