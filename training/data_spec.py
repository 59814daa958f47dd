"""What `emsteer finetune --data` names (an arm, a URL or a file), decided without reading anything, so a
mistyped arm is one line before torch loads."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from interventions.errors import EmsteerError
from interventions.run_layout import ARMS

__all__ = ["data_kind", "is_url"]


def is_url(data: str) -> bool:
    """Whether `data` is an http(s) or file URL."""
    return urllib.parse.urlparse(data).scheme in ("http", "https", "file")


def data_kind(data: str) -> str:
    """`arm`, `url` or `path`; one line for an empty value or a bare word that is neither an arm nor a file."""
    if not isinstance(data, str) or not data.strip():
        raise EmsteerError("--data is empty; give an arm (" + ", ".join(ARMS) + "), a JSONL path or a URL")
    if data in ARMS:
        return "arm"
    if is_url(data):
        return "url"
    path = Path(data).expanduser()
    if not path.exists() and "/" not in data and not path.suffix:
        raise EmsteerError(f"unknown arm {data!r}; choose one of: {', '.join(ARMS)}, or give a JSONL path or URL")
    return "path"
