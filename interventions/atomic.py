"""Atomic writes: a file or a folder appears whole under its final name, or not at all.

Temp files and folders are written beside their final name and carry the writer's PID
(`.NAME.PID-*.tmp`, `.NAME.building-PID-*`, `.NAME.old-PID`); a writer killed with SIGKILL cannot clean
up, so the next write of the same name removes the temps of writers that are no longer running."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from interventions.errors import EmsteerError


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` (and parents) or fail with one line saying it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
        probe.close()
    except OSError as err:
        raise EmsteerError(f"cannot write to {path}: {err.strerror or err}") from None
    return path


def _pid_alive(pid: int) -> bool:
    """Whether a process with this PID is running (a live process of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(final: Path) -> list[Path]:
    """Remove the temps that killed writers left beside `final` (their PID no longer runs); returns them."""
    removed: list[Path] = []
    if not final.parent.is_dir():
        return removed
    pattern = re.compile(re.escape(f".{final.name}.") + r"(?:building-|old-)?(\d+)(?:-.*)?")
    for p in final.parent.glob(f".{final.name}.*"):
        m = pattern.fullmatch(p.name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder, fsync and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """Atomically write one JSON object per line."""
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


@contextlib.contextmanager
def atomic_dir(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success rename it to `final` (replacing an old one only
    if `replace`); on any error remove it, leaving `final` untouched (and temps of killed writers go first)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.building-{os.getpid()}-"))
    try:
        yield tmp
        if final.exists():
            if not replace:
                raise FileExistsError(f"{final} already exists")
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
