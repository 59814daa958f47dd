"""Direction files and direction math: the ONE place for direction I/O, unit vectors and norm matching.

A direction file is a safetensors file holding exactly one fp32 tensor named `direction` of shape
[d_model], plus string metadata. Standard metadata keys are the `KEY_*` constants below (model id and
weights hash, layer, pooling, contrast, n per class, norm, mean residual norm `R` at that layer, the
command that made it, hashes of its inputs); any extra string keys are kept. Pickles are never read.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from interventions.errors import EmsteerError

TENSOR_NAME = "direction"
FORMAT = "emsteer-direction/1"

KEY_FORMAT = "format"
KEY_MODEL_ID = "model_id"
KEY_WEIGHTS_HASH = "weights_sha256"
KEY_LAYER = "layer"
KEY_POOLING = "pooling"
KEY_CONTRAST = "contrast"
KEY_N_PER_CLASS = "n_per_class"
KEY_NORM = "norm"
KEY_R = "mean_residual_norm"
KEY_COMMAND = "command"
KEY_INPUT_HASHES = "input_hashes"

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
_MAX_HEADER = 100 * 1024 * 1024


@dataclass
class Direction:
    """A direction vector (fp32, 1-D) with its string metadata.

    `sources` maps every file this direction was read or derived from to its sha256, so a caller can record
    exactly what it used."""

    vector: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def width(self) -> int:
        """d_model of the vector."""
        return int(self.vector.shape[0])

    @property
    def norm(self) -> float:
        """L2 norm of the vector."""
        return float(self.vector.double().norm())

    @property
    def model_id(self) -> str | None:
        """The model id recorded in the metadata, if any."""
        return self.metadata.get(KEY_MODEL_ID)

    @property
    def layer(self) -> int | None:
        """The layer recorded in the metadata, if any (an int)."""
        return _opt_int(self.metadata.get(KEY_LAYER))

    @property
    def mean_residual_norm(self) -> float | None:
        """`R`, the mean residual norm at the direction's layer, if recorded."""
        return _opt_float(self.metadata.get(KEY_R))


def _opt_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _opt_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _as_str(value: Any) -> str:
    """Metadata values are strings; numbers/bools are str()-ed, containers JSON-encoded."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def check_vector(vec: torch.Tensor, what: str = "direction") -> torch.Tensor:
    """Validate a direction vector (1-D, floating, finite, nonzero) and return it as contiguous fp32 on CPU."""
    if not isinstance(vec, torch.Tensor):
        raise EmsteerError(f"{what} must be a torch.Tensor, got {type(vec).__name__}")
    if vec.ndim != 1:
        raise EmsteerError(f"{what} must be 1-D [d_model], got shape {tuple(vec.shape)}")
    if not vec.is_floating_point():
        raise EmsteerError(f"{what} must be floating point, got {vec.dtype}")
    if vec.shape[0] == 0:
        raise EmsteerError(f"{what} is empty")
    out = vec.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(out).all()):
        raise EmsteerError(f"{what} has non-finite values (NaN or inf)")
    if float(out.double().norm()) == 0.0:
        raise EmsteerError(f"{what} is the zero vector")
    return out


def unit(vec: torch.Tensor) -> torch.Tensor:
    """`vec / ||vec||` (norm computed in float64, result in vec's dtype); raises on a zero vector."""
    norm = vec.double().norm()
    if float(norm) == 0.0 or not math.isfinite(float(norm)):
        raise EmsteerError("cannot normalise a zero or non-finite vector")
    return (vec.double() / norm).to(vec.dtype)


def matched_norm(vec: torch.Tensor, target_norm: float) -> torch.Tensor:
    """`vec` rescaled to L2 norm `target_norm` (direction kept, dtype kept)."""
    if not math.isfinite(target_norm) or target_norm < 0:
        raise EmsteerError(f"target norm must be finite and >= 0, got {target_norm}")
    return (unit(vec).double() * target_norm).to(vec.dtype)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    h = sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_safetensors(raw: bytes) -> bytes:
    """`raw` safetensors bytes with a canonical header (keys sorted, compact JSON; tensor data unchanged), so
    the same tensors and metadata always give the same bytes, hence the same sha256. (The safetensors writer
    orders metadata keys at random, which would make every re-written file look like a different input.)"""
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as the writer keeps it
    return struct.pack("<Q", len(text)) + text + raw[8 + n:]


def write_safetensors_atomic(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                             metadata: Mapping[str, str] | None = None) -> Path:
    """Write `tensors` + string `metadata` to `path` as safetensors with a canonical header
    (`canonical_safetensors`), via a temp file in the same folder + os.replace (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                  metadata=dict(metadata) if metadata else None)
        data = canonical_safetensors(Path(tmp).read_bytes())
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_direction(path: str | os.PathLike[str], direction: Direction) -> Path:
    """Write `direction` to `path` (a `.safetensors` file) atomically: temp file in the same folder + os.replace.

    The stored metadata gets `norm` (recomputed) and `format`; other values are converted to strings."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise EmsteerError(f"direction files must end in .safetensors, got {path}")
    vec = check_vector(direction.vector)
    meta = {str(k): _as_str(v) for k, v in direction.metadata.items()}
    meta[KEY_NORM] = repr(float(vec.double().norm()))
    meta[KEY_FORMAT] = FORMAT
    return write_safetensors_atomic(path, {TENSOR_NAME: vec}, meta)


def _check_not_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise EmsteerError(
            f"refusing {path}: {path.suffix} files are pickles, which are never loaded; use a .safetensors direction file"
        )
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        raise EmsteerError(f"refusing {path}: it is a zip archive (torch.save format), not safetensors")
    # a safetensors header length of 640, 896, 1152 or 1408 bytes also starts 0x80 0x02..0x05: its JSON opens at 8
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[8:9] != b"{":
        raise EmsteerError(f"refusing {path}: it is a pickle, not safetensors")


def _check_safetensors_layout(path: Path) -> None:
    """Header length, JSON header and data offsets must fit in the file (catches truncation)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise EmsteerError(f"{path} is not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n == 0 or n > _MAX_HEADER or 8 + n > size:
            raise EmsteerError(f"{path} is truncated or not a safetensors file (bad header length {n}, file {size} bytes)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EmsteerError(f"{path} is corrupt: safetensors header is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise EmsteerError(f"{path} is corrupt: safetensors header is not a JSON object")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and offsets[1] <= data_len):
            raise EmsteerError(f"{path} is truncated or corrupt: tensor {name!r} lies beyond the end of the file")


def load_direction(
    path: str | os.PathLike[str],
    expected_width: int | None = None,
    expected_model: str | None = None,
) -> Direction:
    """Read and validate a direction file (never unpickles anything).

    Checks: the file exists; it is not a pickle/zip (by suffix or magic bytes); it is intact safetensors; it holds
    exactly one tensor, `direction`, fp32 and 1-D, finite and nonzero; its width equals `expected_width` and its
    metadata `model_id` equals `expected_model` when those are given. Every failure is one-line `EmsteerError`."""
    path = Path(path)
    if not path.exists():
        raise EmsteerError(f"direction file not found: {path}")
    if not path.is_file():
        raise EmsteerError(f"direction path is not a file: {path}")
    _check_not_pickle(path)
    _check_safetensors_layout(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            meta = dict(f.metadata() or {})
            if names != [TENSOR_NAME]:
                raise EmsteerError(f"{path} must hold exactly one tensor named {TENSOR_NAME!r}, found {names}")
            vec = f.get_tensor(TENSOR_NAME)
    except EmsteerError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad files
        raise EmsteerError(f"{path} is not a valid safetensors file: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if vec.dtype != torch.float32:
        raise EmsteerError(f"{path}: tensor {TENSOR_NAME!r} must be float32, got {vec.dtype}")
    vec = check_vector(vec, what=f"{path}: tensor {TENSOR_NAME!r}")
    if expected_width is not None and vec.shape[0] != expected_width:
        raise EmsteerError(
            f"{path}: direction width {vec.shape[0]} does not match the model's hidden size {expected_width}"
        )
    if expected_model is not None:
        recorded = meta.get(KEY_MODEL_ID)
        if recorded is None:
            raise EmsteerError(f"{path} records no {KEY_MODEL_ID}; expected {expected_model!r}")
        if recorded != expected_model:
            raise EmsteerError(f"{path} was made for model {recorded!r}, not {expected_model!r}")
    return Direction(vector=vec, metadata=meta, sources={str(path): sha256_file(path)})


def derived_direction(
    vector: torch.Tensor,
    base: Direction,
    updates: Mapping[str, Any],
    extra_sources: Mapping[str, str] | None = None,
) -> Direction:
    """A new Direction built from `base` (e.g. a control): metadata copied then updated, norm recomputed,
    sources merged, so provenance carries over."""
    vec = check_vector(vector)
    meta = dict(base.metadata)
    meta.update({str(k): _as_str(v) for k, v in updates.items()})
    meta[KEY_NORM] = repr(float(vec.double().norm()))
    sources = dict(base.sources)
    sources.update(extra_sources or {})
    return Direction(vector=vec, metadata=meta, sources=sources)
