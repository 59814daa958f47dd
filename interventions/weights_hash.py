"""THE weights hash of a model or adapter folder, recorded (organism.json, finetune.json, direction metadata, provider
records) and checked (organism cache, adapter vs its base, direction vs its model) everywhere: the sha256 of the
folder's one `*.safetensors` file, or for sharded weights the sha256 of the sorted "name:sha256" lines of its shards.
"""

from __future__ import annotations

import os
import re
import threading
from hashlib import sha256
from pathlib import Path

from interventions.directions import sha256_file
from interventions.errors import EmsteerError

# weight formats never read (pickles) or not used by transformers' safetensors loading
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".lock")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

_HASH_MEMO: dict[tuple[str, int, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised per process by (real path, inode, size, mtime; an atomic rewrite is a new inode).
    A Hugging Face cache symlink into `blobs/<sha256>` (LFS files) is answered from the blob name the hub verified
    at download."""
    real = Path(os.path.realpath(path))
    if path.is_symlink() and _HEX64.match(real.name) and real.parent.name == "blobs":
        return real.name
    st = real.stat()
    key = (str(real), st.st_ino, st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASH_MEMO:
            return _HASH_MEMO[key]
    digest = sha256_file(real)
    with _HASH_LOCK:
        _HASH_MEMO[key] = digest
    return digest


def _readable_files(folder: Path) -> list[Path]:
    """The top-level files a `from_pretrained` of `folder` may read (pickled formats and hidden files excluded)."""
    return [p for p in sorted(Path(folder).iterdir())
            if not p.name.startswith(".") and p.is_file() and not p.name.endswith(_SKIP_SUFFIXES)]


def folder_hashes(folder: Path) -> dict[str, str]:
    """{path: sha256} of every top-level file a `from_pretrained` of `folder` may read, sorted by path (the
    provenance record of a model or adapter; pickled weight formats and hidden files excluded)."""
    return {str(p): file_sha256(p) for p in _readable_files(folder)}


def weights_sha256(folder: str | Path) -> str:
    """THE weights hash of a model or adapter folder (see the module docstring); one-line error when the folder
    holds no `.safetensors` weights."""
    folder = Path(folder)
    shards = [(p.name, file_sha256(p)) for p in _readable_files(folder) if p.name.endswith(".safetensors")]
    if not shards:
        raise EmsteerError(f"{folder} has no .safetensors weights (pickled weights such as .bin are never loaded)")
    if len(shards) == 1:
        return shards[0][1]
    return sha256("\n".join(f"{n}:{h}" for n, h in shards).encode()).hexdigest()


