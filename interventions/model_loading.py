"""The provider's process-wide model cache: a base model (+ LoRA adapters) loaded once per process through
`interventions.model_ref.load_pretrained`.

`load_model(key)` returns a `LoadedModel` cached under its `LoadKey` (path or hub id, auto class, dtype,
device, 4-bit, trust_remote_code): every provider instance with the same key shares one copy of the
weights. LoRA adapters are loaded INTO that shared model under their own names (peft multi-adapter), and a
batch selects one with `LoadedModel.adapter(name)` (None = the base, via peft's `disable_adapter()`), so
base, insecure and secure variants in one process cost one base load.

`LoadedModel.lock` serialises everything that touches the model (adapter loading, generation, hooks):
steering hooks are installed on the shared modules for the duration of one batch only.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from interventions.errors import EmsteerError
from interventions.model_ref import (
    DTYPES,
    attach_adapter,
    load_pretrained,
    local_snapshot,
    nf4_config,
)
from interventions.weights_hash import folder_hashes, weights_sha256


# ------------------------------------------------------------------------------------------- loading

@dataclass(frozen=True)
class LoadKey:
    """Everything that makes two loads of a base model different."""

    model: str  # local folder (absolute) or hub id
    auto_class: str = "AutoModelForCausalLM"
    dtype: str = "auto"
    device: str = "cpu"
    load_in_4bit: bool = False
    trust_remote_code: bool = False


@dataclass
class LoadedModel:
    """A loaded base model (possibly wrapped by peft with several named adapters) and its tokenizer."""

    key: LoadKey
    model: Any
    tokenizer: Any
    files: dict[str, str]
    weights_sha256: str
    adapters: dict[str, str] = field(default_factory=dict)  # adapter name -> folder
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def add_adapter(self, folder: Path, name: str) -> str:
        """Load the LoRA adapter in `folder` under `name` (once; later calls are no-ops)."""
        with self.lock:
            if name in self.adapters:
                return name
            self.model = attach_adapter(self.model, folder, name)
            self.model.eval()
            self.adapters[name] = str(folder)
            return name

    @contextmanager
    def adapter(self, name: str | None) -> Iterator[Any]:
        """Select adapter `name` (None = the bare base model) for the enclosed block; yields the model to call.
        Callers hold `lock`."""
        if not self.adapters:  # a bare model (peft is not even imported)
            if name is not None:
                raise EmsteerError(f"adapter {name!r} is not loaded")
            yield self.model
            return
        if name is None:
            with self.model.disable_adapter():
                yield self.model
            return
        if name not in self.adapters:
            raise EmsteerError(f"adapter {name!r} is not loaded")
        self.model.set_adapter(name)
        yield self.model


_CACHE: dict[LoadKey, LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def loaded_models() -> list[LoadedModel]:
    """The models loaded in this process (for tests and diagnostics)."""
    with _CACHE_LOCK:
        return list(_CACHE.values())


def load_model(key: LoadKey, model_type: str = "") -> LoadedModel:
    """The cached `LoadedModel` for `key`, loading it (weights once per process) if needed."""
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        loaded = _load(key, model_type)
        _CACHE[key] = loaded
        return loaded


def _load(key: LoadKey, model_type: str) -> LoadedModel:
    quantization = None
    if key.load_in_4bit:
        dtype = DTYPES[key.dtype]  # compute dtype: the one asked for, bf16 for auto or fp32
        quantization = nf4_config(dtype if isinstance(dtype, torch.dtype) and dtype != torch.float32
                                  else torch.bfloat16)
    model, tokenizer = load_pretrained(key.model, auto_class=key.auto_class, model_type=model_type, dtype=key.dtype,
                                       device=key.device, trust_remote_code=key.trust_remote_code,
                                       quantization_config=quantization, padding_side="left")
    folder = local_snapshot(key.model)
    files = folder_hashes(folder) if folder is not None else {}
    digest = weights_sha256(folder) if files else "unknown"
    return LoadedModel(key=key, model=model, tokenizer=tokenizer, files=files, weights_sha256=digest)
