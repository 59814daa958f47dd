"""Load a base model (+ LoRA adapters) once per process, read configs without weights, hash files.

`load_model(key)` returns a `LoadedModel` cached under its `LoadKey` (path or hub id, auto class, dtype,
device, 4-bit, trust_remote_code): every provider instance with the same key shares one copy of the
weights. LoRA adapters are loaded INTO that shared model under their own names (peft multi-adapter), and a
batch selects one with `LoadedModel.adapter(name)` (None = the base, via peft's `disable_adapter()`), so
base, insecure and secure variants in one process cost one base load.

`LoadedModel.lock` serialises everything that touches the model (adapter loading, generation, hooks):
steering hooks are installed on the shared modules for the duration of one batch only.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from interventions.directions import sha256_file
from interventions.errors import EmsteerError

DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto", "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
}
# weight formats never read (pickles) or not used by transformers' safetensors loading
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".lock")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ------------------------------------------------------------------------------------------- hashing

_HASH_MEMO: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised per process by (real path, size, mtime). A Hugging Face cache symlink
    into `blobs/<sha256>` (LFS files) is answered from the blob name the hub verified at download."""
    real = Path(os.path.realpath(path))
    if path.is_symlink() and _HEX64.match(real.name) and real.parent.name == "blobs":
        return real.name
    st = real.stat()
    key = (str(real), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASH_MEMO:
            return _HASH_MEMO[key]
    digest = sha256_file(real)
    with _HASH_LOCK:
        _HASH_MEMO[key] = digest
    return digest


def folder_hashes(folder: Path) -> dict[str, str]:
    """{path: sha256} of the top-level files a `from_pretrained` of `folder` may read (pickled weight
    formats and hidden files excluded), sorted by path."""
    out: dict[str, str] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.name.endswith(_SKIP_SUFFIXES):
            continue
        out[str(p)] = file_sha256(p)
    return out


def weights_digest(hashes: dict[str, str]) -> str:
    """The model's weights hash from `folder_hashes`: the sha256 of its one `*.safetensors` file, or for a
    sharded model the sha256 of the sorted "name:sha256" lines of its shards."""
    from hashlib import sha256

    shards = sorted((Path(p).name, h) for p, h in hashes.items() if p.endswith(".safetensors"))
    if not shards:
        raise EmsteerError("no .safetensors weight files found")
    if len(shards) == 1:
        return shards[0][1]
    return sha256("\n".join(f"{n}:{h}" for n, h in shards).encode()).hexdigest()


def local_snapshot(model: str) -> Path | None:
    """A local folder for `model`: the folder itself, or the cached snapshot of a hub id (None if the hub
    id is not in the local Hugging Face cache)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or not a valid id): the caller decides
        return None


# ------------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class ConfigInfo:
    """What validation needs from config.json (no weights read)."""

    model_type: str
    architectures: tuple[str, ...]
    n_layers: int
    d_model: int
    text_model_type: str


def read_config(model: str, trust_remote_code: bool = False) -> ConfigInfo:
    """Layer count and hidden size from the model's config.json (AutoConfig; no weights)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - one line naming the model
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EmsteerError(f"cannot read the config of {model!r} ({first})") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers, d_model = getattr(text, "num_hidden_layers", None), getattr(text, "hidden_size", None)
    if not isinstance(n_layers, int) or not isinstance(d_model, int):
        raise EmsteerError(f"config of {model!r} has no num_hidden_layers/hidden_size in its text config")
    return ConfigInfo(model_type=str(config.model_type), architectures=tuple(config.architectures or ()),
                      n_layers=n_layers, d_model=d_model, text_model_type=str(getattr(text, "model_type", "")))


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
            from peft import PeftModel

            try:
                if not isinstance(self.model, PeftModel):
                    self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name,
                                                           is_trainable=False)
                else:
                    self.model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
            except Exception as err:  # noqa: BLE001
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise EmsteerError(f"cannot load the LoRA adapter in {folder}: {first}") from None
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


def default_device() -> str:
    """cuda:0 when CUDA is available, else mps, else cpu."""
    if torch.cuda.is_available():
        return "cuda:0"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


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
    import transformers
    from transformers import AutoTokenizer

    loader = getattr(transformers, key.auto_class)
    kwargs: dict[str, Any] = dict(dtype=DTYPES[key.dtype], trust_remote_code=key.trust_remote_code,
                                  use_safetensors=True)
    if model_type == "gemma2":
        kwargs["attn_implementation"] = "eager"  # Gemma-2 softcapping needs eager attention
    if key.load_in_4bit:
        from transformers import BitsAndBytesConfig

        compute = DTYPES[key.dtype] if key.dtype not in ("auto", "float32", "fp32") else torch.bfloat16
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=compute)
    try:
        model = loader.from_pretrained(key.model, device_map=key.device, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(key.model, trust_remote_code=key.trust_remote_code)
    except Exception as err:  # noqa: BLE001
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EmsteerError(f"cannot load {key.model!r} with {key.auto_class}: {first}") from None
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    folder = local_snapshot(key.model)
    files = folder_hashes(folder) if folder is not None else {}
    digest = weights_digest(files) if files else "unknown"
    return LoadedModel(key=key, model=model, tokenizer=tokenizer, files=files, weights_sha256=digest)
