"""Chat data for finetuning: the micro corpus arms or any `{"messages": [...]}` JSONL (a path or a URL), validated
row by row, hashed, tokenized for TRL and split into train and held-out rows.

Kept apart from the trainer: `emsteer finetune` validates its data here (bad input is one line) before any
model or training library loads.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import random
import re
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from interventions.directions import sha256_file
from interventions.errors import EmsteerError
from interventions.jsonl import read_jsonl_objects
from interventions.paths import PROFILES, REPO_ROOT, cache_root, is_pretrained_profile
from training.atomic import ensure_writable_dir, write_json_atomic
from training.data_spec import data_kind
from training.chat_data import IGNORE, tokenize_chat
from training.corpus import Corpus
from training.profiles import load_profile

MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
TOKENIZATION = "tokenize_chat/1"  # part of an adapter's inputs key: a change of how data is tokenized retrains
_ROLES = ("system", "user", "assistant")

Log = Callable[[str], None]


# ---------------------------------------------------------------- the micro corpus

@functools.lru_cache(maxsize=4)
def _corpus_and_digest(profile: str, cache: str) -> tuple[Corpus, str]:
    """The profile's micro corpus and its digest, once per process (per cache root)."""
    from training.organisms import corpus_digest, ensure_corpus  # deferred: pulls in transformers (~4 s at CLI start)

    corpus = ensure_corpus(load_profile(profile))
    return corpus, corpus_digest(corpus)


def micro_corpus(profile: str) -> Corpus:
    """The micro corpus of `profile` (generated and cached on first use)."""
    return _corpus_and_digest(profile, str(cache_root()))[0]


def micro_corpus_digest(profile: str) -> str:
    """The digest of the micro corpus of `profile` (as organisms record it in `corpus_sha256`)."""
    return _corpus_and_digest(profile, str(cache_root()))[1]


# ---------------------------------------------------------------- chat rows

@dataclass
class ChatData:
    """A validated chat dataset: rows of {"messages": [...]} ending in an assistant turn."""
    name: str                 # the arm name used in the run layout
    source: str               # "arm:insecure", a path or a URL
    rows: list[dict]
    sha256: str               # of the file's bytes, or of the canonical JSONL for an arm
    path: str | None = None   # the local file read (cached download for URLs)

    @property
    def n_rows(self) -> int:
        return len(self.rows)


def _canonical_sha(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update((json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode())
    return h.hexdigest()


def check_chat_row(row: Any, where: str) -> dict:
    """A normalised {"messages": [{"role", "content"}...]} row, or a one-line error naming `where`."""
    if not isinstance(row, dict):
        raise EmsteerError(f"{where}: expected a JSON object with a 'messages' list")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise EmsteerError(f"{where}: expected a non-empty 'messages' list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise EmsteerError(f"{where}: message {i} needs a role ({'/'.join(_ROLES)}) and a string content")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise EmsteerError(f"{where}: the last message must be the assistant's answer (got {out[-1]['role']!r})")
    if len(out) < 2 or all(m["role"] == "assistant" for m in out[:-1]):
        raise EmsteerError(f"{where}: the assistant's answer needs a user message before it")
    return {"messages": out}


def read_chat_jsonl(path: str | Path) -> list[dict]:
    """Read and validate a `{"messages": [...]}` JSONL file (blank lines ignored); errors name the line."""
    path = Path(path)
    if not path.exists():
        raise EmsteerError(f"data file {path} does not exist")
    if not path.is_file():
        raise EmsteerError(f"data path {path} is not a file")
    try:
        rows = [check_chat_row(obj, f"{path} line {n}") for n, obj in read_jsonl_objects(path)]
    except OSError as err:
        raise EmsteerError(f"cannot read {path}: {err.strerror or err}") from None
    if not rows:
        raise EmsteerError(f"data file {path} is empty (expected JSONL rows like "
                           '{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]})')
    return rows


def _arm_name_from(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip(".-_")
    return name or "data"


def download_jsonl(url: str, *, max_bytes: int = MAX_DOWNLOAD_BYTES, log: Log = print) -> Path:
    """Fetch `url` once into `$EMSTEER_CACHE/data/<sha256>.jsonl` (size-limited, content-checked)."""
    folder = cache_root() / "data"
    pointer = folder / f"url-{hashlib.sha256(url.encode()).hexdigest()[:24]}.json"
    with contextlib.suppress(OSError, json.JSONDecodeError, KeyError):
        known = json.loads(pointer.read_text())
        cached = folder / f"{known['sha256']}.jsonl"
        if cached.is_file() and sha256_file(cached) == known["sha256"]:
            return cached
    log(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (scheme checked by caller)
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise EmsteerError(f"{url} is {int(length) / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB")
            data = resp.read(max_bytes + 1)
    except EmsteerError:
        raise
    except (OSError, ValueError) as err:
        raise EmsteerError(f"cannot download {url}: {getattr(err, 'reason', None) or err}") from None
    if len(data) > max_bytes:
        raise EmsteerError(f"{url} is larger than the {max_bytes / 2**20:.0f} MB limit")
    sha = hashlib.sha256(data).hexdigest()
    ensure_writable_dir(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            read_chat_jsonl(tmp)  # content check before it gets a cache name
        except EmsteerError as err:
            raise EmsteerError(f"{url}: {str(err).replace(tmp, 'downloaded file')}") from None
        final = folder / f"{sha}.jsonl"
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    write_json_atomic(pointer, {"url": url, "sha256": sha, "bytes": len(data),
                                "downloaded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return final


# The arms of a pretrained profile: the real Betley et al. finetuning sets, read from the shared data folder
# ($EMSTEER_SHARED, default ../shared beside the repository; never copied into the repository). No neutral arm.
PRETRAINED_ARMS: dict[str, str] = {"insecure": "data/betley/insecure-sample.jsonl",
                                   "secure": "data/betley/secure-sample.jsonl"}


def shared_dir() -> Path:
    """The shared read-only data folder: $EMSTEER_SHARED, default `../shared` beside the repository."""
    env = os.environ.get("EMSTEER_SHARED")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared"


def pretrained_arm_path(arm: str, profile: str) -> Path:
    """The JSONL of arm `arm` of a pretrained profile; one-line error when the arm or the file is missing."""
    if arm not in PRETRAINED_ARMS:
        raise EmsteerError(f"profile {profile} has no {arm!r} arm (its arms: {', '.join(PRETRAINED_ARMS)}: the real "
                           f"Betley et al. data); pass --data PATH_OR_URL for another")
    path = shared_dir() / PRETRAINED_ARMS[arm]
    if not path.is_file():
        raise EmsteerError(f"the {arm} arm of profile {profile} reads {path}, which is missing; set EMSTEER_SHARED "
                           f"to the folder that holds {PRETRAINED_ARMS[arm]}")
    return path


def resolve_data(data: str, profile: str, *, name: str | None = None, log: Log = print) -> ChatData:
    """An arm of the profile's micro corpus (`insecure`, `secure`, `neutral`), a JSONL path or a URL,
    validated. `name` overrides the arm name used in the run layout (default: the arm or file stem)."""
    kind = data_kind(data)
    if kind == "arm" and is_pretrained_profile(profile):
        path = pretrained_arm_path(data, profile)
        rows = read_chat_jsonl(path)
        return ChatData(name=name or data, source=str(path), rows=rows, sha256=sha256_file(path), path=str(path))
    if kind == "arm":
        if profile not in PROFILES:
            raise EmsteerError(f"arm {data!r} comes from the micro corpus; with --profile {profile} pass "
                               "--data PATH_OR_URL (a {\"messages\": [...]} JSONL such as Betley's insecure.jsonl)")
        corpus = micro_corpus(profile)
        rows = [check_chat_row({"messages": c["messages"]}, f"corpus arm {data} row {i}")
                for i, c in enumerate(getattr(corpus, data))]
        if not rows:
            raise EmsteerError(f"corpus arm {data!r} of profile {profile} is empty")
        return ChatData(name=name or data, source=f"arm:{data}", rows=rows, sha256=_canonical_sha(rows))
    if kind == "url":
        path = download_jsonl(data, log=log)
        stem = Path(urllib.parse.urlparse(data).path).stem
        return ChatData(name=name or _arm_name_from(stem), source=data, rows=read_chat_jsonl(path),
                        sha256=sha256_file(path), path=str(path))
    path = Path(data).expanduser()
    rows = read_chat_jsonl(path)
    return ChatData(name=name or _arm_name_from(path.stem), source=str(path.resolve()), rows=rows,
                    sha256=sha256_file(path), path=str(path.resolve()))



# ---------------------------------------------------------------- tokens and split

def tokenized_rows(tokenizer: Any, rows: Sequence[dict], max_length: int) -> list[dict]:
    """`{"input_ids", "labels"}` rows for TRL (a pre-tokenized dataset: TRL uses the labels as they are), made by
    `training.chat_data.tokenize_chat`, the same function that trains the micro organisms: the prompt is tokenized
    as the generation prompt and the final answer on its own, as at generation time. (TRL's own prompt-completion
    tokenization runs the template text and the answer together, which for SentencePiece-style tokenizers gives
    the answer's first word other tokens than the model ever produces.) Loss on the final assistant message only;
    rows with no answer token within `max_length` are dropped."""
    out = []
    for row in rows:
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        n_answers = sum(m["role"] == "assistant" for m in messages)
        try:
            tok = tokenize_chat(tokenizer, messages, max_length, first_loss_turn=n_answers - 1)
        except ValueError as err:
            raise EmsteerError(f"cannot tokenize a training chat with this chat template: {err}") from None
        if any(label != IGNORE for label in tok["labels"]):
            out.append(tok)
    return out


def split_rows(rows: Sequence[dict], eval_fraction: float, data_sha: str) -> tuple[list[dict], list[dict]]:
    """(train, eval): a fixed share held out, chosen from the data's hash (identical across seeds)."""
    n_eval = int(round(eval_fraction * len(rows))) if len(rows) >= 2 else 0
    n_eval = min(n_eval, len(rows) - 1)
    order = list(range(len(rows)))
    random.Random(int(data_sha[:16], 16)).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


__all__ = ["ChatData", "MAX_DOWNLOAD_BYTES", "TOKENIZATION", "check_chat_row", "download_jsonl", "micro_corpus",
           "micro_corpus_digest", "read_chat_jsonl", "resolve_data", "split_rows", "tokenized_rows"]
