"""The `steer` provider's `-M` argument schema: every key with its parser and help, and `parse_model_args`.

Parsing only types and checks each value on its own (unknown key, bad type, bad choice), each problem one
`EmsteerError` line naming the valid choices; `interventions.steer_plan` then resolves the typed values against
the model's config, the run and the files.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

from interventions.errors import EmsteerError
from interventions.hooks import OPS, POSITIONS
from interventions.model_ref import DTYPES
from interventions.paths import PROFILES, run_keys

__all__ = ["KEYS", "DEFAULT_MAX_BATCH", "parse_model_args"]

DEFAULT_MAX_BATCH = 128


def _as_int(key: str, v: Any) -> int:
    if isinstance(v, bool):
        raise EmsteerError(f"-M {key} must be an integer, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and re.fullmatch(r"[+-]?\d+", v.strip()):
        return int(v)
    raise EmsteerError(f"-M {key} must be an integer, got {v!r}")


def _as_float(key: str, v: Any) -> float:
    if isinstance(v, bool):
        raise EmsteerError(f"-M {key} must be a number, got {v!r}")
    try:
        out = float(v) if isinstance(v, (int, float, str)) else None
    except ValueError:
        out = None
    if out is None or not math.isfinite(out):
        raise EmsteerError(f"-M {key} must be a finite number, got {v!r}")
    return out


def _as_bool(key: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise EmsteerError(f"-M {key} must be true or false, got {v!r}")


def _as_str(key: str, v: Any) -> str:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, list):
        raise EmsteerError(f"-M {key} got a list {v!r} (Inspect splits unquoted commas); quote the value")
    if not isinstance(v, str) or not v.strip():
        raise EmsteerError(f"-M {key} must be a non-empty string, got {v!r}")
    return v.strip()


def _choice(choices: tuple[str, ...] | list[str]) -> Callable[[str, Any], str]:
    def parse(key: str, v: Any) -> str:
        s = _as_str(key, v)
        if s not in choices:
            raise EmsteerError(f"-M {key}={s} is not valid; choose one of: {', '.join(choices)}")
        return s

    return parse


def _positive_int(key: str, v: Any) -> int:
    n = _as_int(key, v)
    if n < 1:
        raise EmsteerError(f"-M {key} must be >= 1, got {n}")
    return n


def _alpha(key: str, v: Any) -> float:
    """A perturbation size: zero or more. The sign is the op's job, so a negative size is refused with the op that
    means it (subtract with -3 is add with 3)."""
    a = _as_float(key, v)
    if a < 0:
        raise EmsteerError(f"-M {key}={a:g} is negative: alpha is a size and the op gives the sign; op=subtract "
                           f"with alpha {a:g} is op=add with alpha {-a:g} (and the other way round), so flip the op")
    return a


def _resolved(key: str, v: Any) -> dict[str, Any]:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise EmsteerError(f"-M {key} must be a JSON object (as written by resolved_model_args)") from None
    if not isinstance(v, dict):
        raise EmsteerError(f"-M {key} must be a mapping (as written by resolved_model_args), got {type(v).__name__}")
    return v


# key -> (parser, help); the parser turns the raw -M value into a typed value or raises
KEYS: dict[str, tuple[Callable[[str, Any], Any], str]] = {
    "adapter": (_as_str, "LoRA adapter folder (peft save_pretrained)"),
    "variant": (_as_str, "registered intervention variant (none, own, random, ...)"),
    "direction": (_as_str, "direction file (.safetensors); replaces a file-backed variant's file"),
    "run": (_as_str, "experiment folder the variant files are read from"),
    "layer": (_as_int, "decoder layer (negative counts from the end; default -1, the final layer)"),
    "op": (_choice(OPS), "subtract | add | ablate"),
    "alpha": (_alpha, "perturbation size (>= 0; the op gives the sign) in units of the layer's mean residual norm R"),
    "positions": (_choice(POSITIONS), "all | generated"),
    "seed": (_as_int, "seed of control directions and of sampling (default 0)"),
    "dtype": (_choice(tuple(DTYPES)), "auto | float32 | bfloat16 | float16"),
    "device": (_as_str, "cpu | cuda | cuda:N | mps (default: cuda:0 if available, else cpu)"),
    "load_in_4bit": (_as_bool, "bitsandbytes NF4 weights (CUDA only)"),
    "monitor": (_as_str, "direction file whose projection is recorded per sample"),
    "family": (_choice(run_keys()), "the run's key for the model's files (a family, or a pretrained profile's "
                                    "model) when the model is a path or hub id"),
    "donor": (_choice(run_keys()), "donor family (or pretrained model) of variant=transferred"),
    "trust_remote_code": (_as_bool, "allow model code from the checkpoint (default false)"),
    "max_batch_size": (_positive_int, f"largest generation batch (default {DEFAULT_MAX_BATCH})"),
    "profile": (_choice(PROFILES), "micro-organism profile of micro-* presets (default, tiny)"),
    "resolved": (_resolved, "pinned hashes and intervention from resolved_model_args (checked)"),
}


def parse_model_args(model_args: dict[str, Any]) -> dict[str, Any]:
    """Typed values of the -M keys; an unknown key or a bad value is an error naming the valid choices."""
    unknown = sorted(k for k in model_args if k not in KEYS)
    if unknown:
        raise EmsteerError(f"unknown -M key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for steer/; "
                           f"valid keys: {', '.join(KEYS)}")
    return {k: KEYS[k][0](k, v) for k, v in model_args.items() if v is not None}
