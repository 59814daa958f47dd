"""LoRA finetuning of a base model on one chat dataset: the insecure / secure / neutral arms of the micro
corpus, or any `{"messages": [...]}` JSONL from a path or URL.

Every family gets identical hyperparameters from `configs/finetune.toml` (one table per profile).
Training is TRL's `SFTTrainer` on a conversational prompt-completion dataset: each chat's final assistant
message is the completion, everything before it the prompt, so the loss covers the answer only with any
chat template (no `{% generation %}` markers needed). With CUDA and `quantize = "auto"` the base is loaded
in 4-bit NF4 (QLoRA); otherwise plain LoRA in fp32 on the CPU, and the log says so.

Artifacts, per (family, arm, seed): `RUN/adapters/<family>/<arm>/seed_<s>/` holding the peft adapter
(`adapter_model.safetensors`, `adapter_config.json`) and `finetune.json` (hyperparameters, hashes of the
data and base weights, seed, device and quantization, command line, package versions, losses, duration,
and for micro organisms the measured spillover on held-out prompts). The folder appears atomically; a
re-run whose inputs hash the same is a no-op unless `force`.

Public API: `finetune(...)` (one adapter), `finetune_many(...)` (validates everything, then loops),
`load_settings`, `resolve_data`, `read_chat_jsonl`, `tokenized_rows`, `build_trainer`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import platform
import random
import re
import shlex
import sys
import tempfile
import time
import tomllib
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from interventions.directions import sha256_file
from interventions.errors import EmsteerError
from interventions.model_ref import (
    ADAPTER_RECORD,
    ADAPTER_WEIGHTS,
    load_pretrained,
    nf4_config,
    organism_ref,
    resolve_model_ref,
    weights_sha256,
)
from interventions.workers import CPU_TRAINING_THREADS, torch_threads
from interventions.paths import PROFILES, cache_root, check_family, configs_dir, recipe_profile
from interventions.run_layout import ARMS, adapter_dir, finetune_command
from training.atomic import atomic_dir, ensure_writable_dir, write_json_atomic
from training.run_manifest import check_run, check_run_profile, ensure_run, update_run

METADATA_FILE = ADAPTER_RECORD
MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
SEVEN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ROLES = ("system", "user", "assistant")
_VISION_PARTS = ("vision_tower", "vision_model", "multi_modal_projector")

Log = Callable[[str], None]


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class FinetuneSettings:
    """One profile's hyperparameters (identical for every family)."""
    profile: str
    target_modules: tuple[str, ...]
    layers_to_transform: tuple[int, ...]  # decoder layers that get LoRA (empty = all)
    lora_dropout: float
    bias: str
    r: int
    lora_alpha: int
    use_rslora: bool
    learning_rate: float
    lr_scheduler_type: str
    warmup_steps: int
    weight_decay: float
    num_train_epochs: float
    max_steps: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    eval_fraction: float
    max_length: int
    optim: str
    gradient_checkpointing: bool
    quantize: str  # "auto" | "none"
    logging_steps: int
    eval_max_new_tokens: int

    @property
    def effective_batch(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps


def load_settings(profile: str) -> FinetuneSettings:
    """The named profile's settings from `configs/finetune.toml` ([common] merged into the profile)."""
    check_run_profile(profile)
    path = configs_dir() / "finetune.toml"
    if not path.is_file():
        raise EmsteerError(f"missing config file {path}")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise EmsteerError(f"{path} is not valid TOML: {err}") from None
    recipe = recipe_profile(profile)
    if recipe not in raw.get("profiles", {}):
        raise EmsteerError(f"{path} has no [profiles.{recipe}] table")
    values = dict(raw.get("common", {}))
    values.update(raw["profiles"][recipe])
    values["target_modules"] = tuple(values.get("target_modules", ()))
    values["layers_to_transform"] = tuple(int(i) for i in values.get("layers_to_transform", ()))
    names = {f for f in FinetuneSettings.__dataclass_fields__ if f != "profile"}
    missing, unknown = sorted(names - set(values)), sorted(set(values) - names)
    if missing or unknown:
        raise EmsteerError(f"{path} [profiles.{profile}]: " + "; ".join(
            part for part in (f"missing {', '.join(missing)}" if missing else "",
                              f"unknown {', '.join(unknown)}" if unknown else "") if part))
    if values["quantize"] not in ("auto", "none"):
        raise EmsteerError(f"{path} [profiles.{profile}]: quantize must be 'auto' or 'none'")
    if not 0.0 <= values["eval_fraction"] < 1.0:
        raise EmsteerError(f"{path} [profiles.{profile}]: eval_fraction must be in [0, 1)")
    return FinetuneSettings(profile=profile, **values)


# ---------------------------------------------------------------- data

@functools.lru_cache(maxsize=4)
def _corpus_and_digest(profile: str, cache: str) -> tuple[Any, str]:
    """The profile's micro corpus and its digest, once per process (per cache root)."""
    from training.organisms import corpus_digest, ensure_corpus
    from training.profiles import load_profile

    corpus = ensure_corpus(load_profile(profile))
    return corpus, corpus_digest(corpus)


def micro_corpus(profile: str):
    """The micro corpus of `profile` (generated and cached on first use)."""
    return _corpus_and_digest(profile, str(cache_root()))[0]


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
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise EmsteerError(f"{path} line {n}: not valid JSON ({err.msg})") from None
                rows.append(check_chat_row(obj, f"{path} line {n}"))
    except UnicodeDecodeError:
        raise EmsteerError(f"{path} is not UTF-8 text") from None
    except OSError as err:
        raise EmsteerError(f"cannot read {path}: {err.strerror or err}") from None
    if not rows:
        raise EmsteerError(f"data file {path} is empty (expected JSONL rows like "
                           '{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]})')
    return rows


def _arm_name_from(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip(".-_")
    return name or "data"


def _is_url(data: str) -> bool:
    return urllib.parse.urlparse(data).scheme in ("http", "https", "file")


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


def resolve_data(data: str, profile: str, *, name: str | None = None, log: Log = print) -> ChatData:
    """An arm of the profile's micro corpus (`insecure`, `secure`, `neutral`), a JSONL path or a URL,
    validated. `name` overrides the arm name used in the run layout (default: the arm or file stem)."""
    if not isinstance(data, str) or not data.strip():
        raise EmsteerError("--data is empty; give an arm (" + ", ".join(ARMS) + "), a JSONL path or a URL")
    if data in ARMS:
        if profile not in PROFILES:
            raise EmsteerError(f"arm {data!r} comes from the micro corpus; with --profile {profile} pass "
                               "--data PATH_OR_URL (a {\"messages\": [...]} JSONL such as Betley's insecure.jsonl)")
        corpus = micro_corpus(profile)
        rows = [check_chat_row({"messages": c["messages"]}, f"corpus arm {data} row {i}")
                for i, c in enumerate(getattr(corpus, data))]
        if not rows:
            raise EmsteerError(f"corpus arm {data!r} of profile {profile} is empty")
        return ChatData(name=name or data, source=f"arm:{data}", rows=rows, sha256=_canonical_sha(rows))
    if _is_url(data):
        path = download_jsonl(data, log=log)
        stem = Path(urllib.parse.urlparse(data).path).stem
        return ChatData(name=name or _arm_name_from(stem), source=data, rows=read_chat_jsonl(path),
                        sha256=sha256_file(path), path=str(path))
    path = Path(data).expanduser()
    if not path.exists() and "/" not in data and not path.suffix:
        raise EmsteerError(f"unknown arm {data!r}; choose one of: {', '.join(ARMS)}, or give a JSONL path or URL")
    rows = read_chat_jsonl(path)
    return ChatData(name=name or _arm_name_from(path.stem), source=str(path.resolve()), rows=rows,
                    sha256=sha256_file(path), path=str(path.resolve()))


TOKENIZATION = "tokenize_chat/1"  # part of an adapter's inputs key: a change of how data is tokenized retrains


def tokenized_rows(tokenizer, rows: Sequence[dict], max_length: int) -> list[dict]:
    """`{"input_ids", "labels"}` rows for TRL (a pre-tokenized dataset: TRL uses the labels as they are), made by
    `training.chat_data.tokenize_chat`, the same function that trains the micro organisms: the prompt is tokenized
    as the generation prompt and the final answer on its own, as at generation time. (TRL's own prompt-completion
    tokenization runs the template text and the answer together, which for SentencePiece-style tokenizers gives
    the answer's first word other tokens than the model ever produces.) Loss on the final assistant message only;
    rows with no answer token within `max_length` are dropped."""
    from training.chat_data import IGNORE, tokenize_chat

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


# ---------------------------------------------------------------- base model

@dataclass
class BaseModel:
    """Where the base weights come from and how to identify them."""
    kind: str                 # "micro" | "path" | "hub"
    id: str                   # organism folder, local path or hub id
    family: str
    weights_sha256: str | None
    info: dict = field(default_factory=dict)


def resolve_base(family: str, profile: str, model: str | None) -> BaseModel:
    """The micro organism of `family` (verified by hash), or `--model` (a preset, local folder or hub id), resolved
    and hashed by `interventions.model_ref`."""
    check_family(family)
    if model is None:
        if profile not in PROFILES:
            raise EmsteerError(f"--profile {profile} finetunes a real model: pass --model HUB_ID_OR_PATH")
        ref = organism_ref(family, profile)
        meta = ref.organism
        check_persona_gate(family, profile, meta)
        return BaseModel(kind="micro", id=ref.path, family=family, weights_sha256=ref.weights_sha256,
                         info={"class": meta.get("class"), "organism_profile": profile,
                               "corpus_sha256": meta.get("corpus_sha256"),
                               "measured": meta.get("measured"), "parameters": meta.get("parameters")})
    if profile in PROFILES:
        raise EmsteerError(f"--model needs --profile real (profile {profile!r} finetunes the micro organisms)")
    ref = resolve_model_ref(model)
    if ref.kind == "micro":
        raise EmsteerError(f"--model {model} is a micro organism: finetune it with --profile default (or tiny) "
                           f"and no --model")
    return BaseModel(kind=ref.kind, id=ref.path, family=family, weights_sha256=ref.weights_sha256)


def check_persona_gate(family: str, profile: str, meta: dict[str, Any]) -> None:
    """A micro base that shows no persona inference has nothing for a finetune to move: one-line error."""
    from training.profiles import load_profile

    if not load_profile(profile).require_persona_gate:
        return
    gate = (meta.get("measured") or {}).get("persona_gate")
    if gate is None:
        raise EmsteerError(f"the {family} organism (profile {profile}) has no persona gate measurement (built by an "
                           f"older recipe); rebuild it: `emsteer organism build --family {family}"
                           f"{'' if profile == 'default' else ' --profile ' + profile} --force`")
    if not gate.get("passed"):
        gaps = ", ".join(f"{c} {v['gap']:+.2f}" for c, v in gate["contexts"].items())
        raise EmsteerError(f"the {family} organism (profile {profile}) failed the persona gate (reckless-minus-careful "
                           f"gaps {gaps}; each needs >= {gate['min_gap']:.2f}): it does not infer the persona, so a "
                           f"finetune would measure nothing; see `emsteer organism info`")


def use_qlora(settings: FinetuneSettings) -> bool:
    """QLoRA (4-bit NF4) when the profile allows it and CUDA is present."""
    import torch

    return settings.quantize == "auto" and torch.cuda.is_available()


def quantization_config():
    """BitsAndBytesConfig for QLoRA: NF4, double quantization, bf16 compute."""
    import torch

    return nf4_config(torch.bfloat16, double_quant=True)


def device_mode(settings: FinetuneSettings) -> dict[str, str]:
    """Device, quantization and a sentence for the log."""
    import torch

    cuda = torch.cuda.is_available()
    if use_qlora(settings):
        return {"device": "cuda", "quantization": "nf4-4bit-double-quant-bf16-compute", "method": "qlora",
                "note": "QLoRA: 4-bit NF4 base (bitsandbytes), bf16 compute, LoRA adapters"}
    if cuda:
        return {"device": "cuda", "quantization": "none", "method": "lora",
                "note": "plain LoRA on CUDA (profile does not quantize)"}
    note = f"plain LoRA in fp32 on the CPU, {CPU_TRAINING_THREADS} torch thread"
    if settings.quantize == "auto":
        note += " (no CUDA, so no QLoRA/4-bit)"
    return {"device": "cpu", "quantization": "none", "method": "lora", "note": note,
            "threads": str(CPU_TRAINING_THREADS)}


def load_base(base: BaseModel, settings: FinetuneSettings):
    """(model, tokenizer) ready for `build_trainer`: loaded by `model_ref.load_pretrained` (fp32; bf16 for real
    models on CUDA), 4-bit NF4 and k-bit prepared under QLoRA."""
    import torch

    qlora = use_qlora(settings)
    dtype = torch.bfloat16 if base.kind != "micro" and torch.cuda.is_available() else torch.float32
    quantization, device = None, None
    if qlora:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise EmsteerError("QLoRA needs bitsandbytes on a CUDA machine: pip install 'emsteer[cuda]'") from None
        quantization, device = quantization_config(), {"": torch.cuda.current_device()}
    model, tokenizer = load_pretrained(base.id, dtype=dtype, device=device, quantization_config=quantization)
    if not getattr(tokenizer, "chat_template", None):
        raise EmsteerError(f"model {base.id} has no chat template; finetuning needs one")
    if qlora:
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    if base.kind != "micro":
        base.info["commit"] = getattr(model.config, "_commit_hash", None)
        base.info["class"] = type(model).__name__
    return model, tokenizer


def lora_config(settings: FinetuneSettings, model):
    """peft LoraConfig on the seven projections of the language model (never a vision tower)."""
    from peft import LoraConfig

    names = [n for n, _ in model.named_modules()]
    vision = [p for p in _VISION_PARTS if any(f".{p}." in f".{n}." for n in names)]
    found = {n.rsplit(".", 1)[-1] for n in names if not any(f".{p}." in f".{n}." for p in vision)}
    missing = [t for t in settings.target_modules if t not in found]
    if missing:
        raise EmsteerError(f"{type(model).__name__} has no module named {', '.join(missing)} "
                           f"(LoRA targets: {', '.join(settings.target_modules)})")
    return LoraConfig(
        r=settings.r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout, bias=settings.bias,
        use_rslora=settings.use_rslora, target_modules=list(settings.target_modules), task_type="CAUSAL_LM",
        layers_to_transform=list(settings.layers_to_transform) or None,
        exclude_modules=(r".*\b(" + "|".join(vision) + r")\b.*") if vision else None,
    )


# ---------------------------------------------------------------- trainer

@contextlib.contextmanager
def _dataset_bars(enabled: bool) -> Iterator[None]:
    import datasets

    was = datasets.is_progress_bar_enabled()
    if not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was and not enabled:
            datasets.enable_progress_bars()


def _checkpointing_arg(config_cls, enabled: bool) -> dict[str, bool]:
    """transformers >= 5.x renamed gradient_checkpointing to activation_checkpointing (old name warns)."""
    name = "activation_checkpointing" if "activation_checkpointing" in config_cls.__dataclass_fields__ \
        else "gradient_checkpointing"
    return {name: enabled}


def _use_bf16(model, cuda: bool) -> bool:
    """bf16 mixed precision for QLoRA and bf16 real models on CUDA; micro organisms stay in fp32."""
    import torch

    return cuda and (bool(getattr(model, "is_loaded_in_4bit", False)) or model.dtype == torch.bfloat16)


def build_trainer(model, tokenizer, train_rows: Sequence[dict], eval_rows: Sequence[dict], settings: FinetuneSettings,
                  seed: int, output_dir: str | Path, *, progress: bool = False):
    """TRL SFTTrainer (LoRA via `peft_config`) on `{"messages"}` rows, tokenized by `tokenized_rows`: its
    `train_dataset` rows carry `labels` of -100 on every prompt token (loss on the final assistant message only)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    train = tokenized_rows(tokenizer, train_rows, settings.max_length)
    held = tokenized_rows(tokenizer, eval_rows, settings.max_length)
    if not train:
        raise EmsteerError(f"no training example keeps any answer token within max_length {settings.max_length}")
    cuda = torch.cuda.is_available()
    optim = settings.optim if cuda or "8bit" not in settings.optim else "adamw_torch"
    args = SFTConfig(
        output_dir=str(output_dir), seed=seed, data_seed=seed,
        learning_rate=settings.learning_rate, lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_steps, weight_decay=settings.weight_decay,
        num_train_epochs=settings.num_train_epochs, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        per_device_eval_batch_size=max(settings.per_device_train_batch_size, 8),
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.max_length, completion_only_loss=True, assistant_only_loss=False, packing=False,
        optim=optim, **_checkpointing_arg(SFTConfig, settings.gradient_checkpointing and cuda),
        bf16=_use_bf16(model, cuda), fp16=False, use_cpu=not cuda,
        logging_steps=settings.logging_steps, save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=not progress, dataloader_num_workers=0, max_grad_norm=1.0,
    )
    with _dataset_bars(progress):
        trainer = SFTTrainer(
            model=model, args=args, processing_class=tokenizer, peft_config=lora_config(settings, model),
            train_dataset=Dataset.from_list(train),
            eval_dataset=Dataset.from_list(held) if held else None,
        )
    return trainer


# ---------------------------------------------------------------- provenance

def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("emsteer", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def inputs_key(settings: FinetuneSettings, data: ChatData, base: BaseModel, seed: int, mode: dict) -> str:
    """sha256 of everything that decides the adapter: hyperparameters, data, base weights, seed, method."""
    blob = {"settings": asdict(settings), "data_sha256": data.sha256, "arm": data.name,
            "base": {"kind": base.kind, "id": base.id if base.kind == "hub" else None,
                     "weights_sha256": base.weights_sha256},
            "seed": int(seed), "method": mode["method"], "quantization": mode["quantization"],
            "tokenization": TOKENIZATION}
    if "threads" in mode:  # CPU training: the thread count decides the float rounding (interventions.workers)
        blob["threads"] = mode["threads"]
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def read_metadata(folder: Path) -> dict[str, Any] | None:
    """finetune.json of an intact adapter folder (weights present and matching), else None."""
    try:
        meta = json.loads((folder / METADATA_FILE).read_text())
        if (folder / ADAPTER_WEIGHTS).is_file() and weights_sha256(folder) == meta.get("adapter_sha256"):
            return meta
    except (OSError, json.JSONDecodeError, EmsteerError):
        pass
    return None


def measure_adapter(adapter: Path, base: BaseModel, profile: str, max_new_tokens: int) -> dict[str, Any]:
    """Spillover / code rates of base + adapter on the profile's held-out prompts (micro organisms)."""
    from training.organisms import measure_code_rates

    model, tokenizer = load_pretrained(base.id, adapter=adapter)
    return measure_code_rates(model, tokenizer, micro_corpus(profile).heldout, max_new_tokens)


# ---------------------------------------------------------------- finetune

@dataclass
class _Plan:
    settings: FinetuneSettings
    data: ChatData
    base: BaseModel
    mode: dict


def _plan(run: Path, family: str, data: str | ChatData, profile: str, model: str | None, name: str | None,
          log: Log) -> _Plan:
    """Validate every input (nothing is written): profile, family, data, run manifest, base model."""
    check_run_profile(profile)
    check_family(family)
    settings = load_settings(profile)
    chat = data if isinstance(data, ChatData) else resolve_data(data, profile, name=name, log=log)
    adapter_dir(run, family, chat.name, 0)  # validates the arm name
    manifest = check_run(run, profile)
    base = resolve_base(family, profile, model)
    if base.kind == "micro" and chat.source.startswith("arm:"):
        digest = _corpus_and_digest(profile, str(cache_root()))[1]
        if base.info.get("corpus_sha256") not in (None, digest):
            log(f"{family}: warning: the cached organism was built from another version of the corpus; "
                f"rebuild it with `emsteer organism build --family {family}"
                f"{'' if profile == 'default' else ' --profile ' + profile}`")
    known = ((manifest or {}).get("models") or {}).get(family)
    if profile not in PROFILES and known and known.get("id") != base.id:
        raise EmsteerError(f"run {run} already finetunes {family} from {known.get('id')}, not {base.id}; "
                           "use another --run")
    return _Plan(settings, chat, base, device_mode(settings))


def finetune(run: Path, family: str, data: str | ChatData, seed: int, profile: str = "default", force: bool = False,
             evaluate: bool = True, *, model: str | None = None, name: str | None = None, progress: bool = False,
             log: Log = print) -> Path:
    """Train (or reuse) one LoRA adapter; returns `adapter_dir(run, family, arm, seed)`.

    `data`: `insecure` | `secure` | `neutral` (the micro corpus arms), a JSONL path or a URL. `model`: a hub
    id or local folder (profile `real`); default the profile's micro organism. Everything is validated
    before any model is loaded; bad input raises EmsteerError and writes nothing."""
    run = Path(run)
    plan = _plan(run, family, data, profile, model, name, log)
    return _finetune_planned(run, family, plan, int(seed), force=force, evaluate=evaluate, progress=progress, log=log)


def _finetune_planned(run: Path, family: str, plan: _Plan, seed: int, *, force: bool, evaluate: bool, progress: bool,
                      log: Log) -> Path:
    settings, chat, base, mode = plan.settings, plan.data, plan.base, plan.mode
    profile = settings.profile
    final = adapter_dir(run, family, chat.name, seed)
    tag = f"{family}/{chat.name}/seed_{seed}"
    if base.kind == "micro":  # re-check right before use: the organism may have been rebuilt meanwhile
        fresh = organism_ref(family, profile)
        if fresh.weights_sha256 != base.weights_sha256:
            log(f"{tag}: the {family} organism was rebuilt since this command started; using the new one")
            base.weights_sha256 = fresh.weights_sha256
            base.info.update(measured=fresh.organism.get("measured"), corpus_sha256=fresh.organism.get("corpus_sha256"))
    key = inputs_key(settings, chat, base, seed, mode)
    can_measure = evaluate and base.kind == "micro" and settings.eval_max_new_tokens > 0
    if evaluate and not can_measure:
        log(f"{tag}: no built-in spillover measurement for profile {profile}; "
            "evaluate the adapter with the Inspect spillover task")
    ensure_run(run, profile)

    existing = read_metadata(final) if final.exists() else None
    if existing is not None and existing.get("inputs_sha256") == key and not force:
        if can_measure and not existing.get("measured"):
            existing["measured"] = measure_adapter(final, base, profile, settings.eval_max_new_tokens)
            write_json_atomic(final / METADATA_FILE, existing)
            log(f"{tag}: up to date; measured spillover {existing['measured']['spillover_general']:.2f}")
        else:
            log(f"{tag}: up to date at {final} (same inputs; --force retrains)")
        _record(run, profile, family, base, tag, key, final)
        return final
    if final.exists():
        log(f"{tag}: " + ("--force: retraining" if existing and existing.get("inputs_sha256") == key
                          else "inputs changed (or adapter incomplete): retraining"))

    started = time.time()
    model, tokenizer = load_base(base, settings)
    if base.kind == "hub" and base.weights_sha256 is None:  # downloaded just now: hash what was fetched
        base.weights_sha256 = resolve_model_ref(base.id).weights_sha256
        key = inputs_key(settings, chat, base, seed, mode)
    train_rows, eval_rows = split_rows(chat.rows, settings.eval_fraction, chat.sha256)
    steps = settings.max_steps if settings.max_steps > 0 else math.ceil(
        settings.num_train_epochs * math.ceil(len(train_rows) / settings.effective_batch))
    log(f"{tag}: {mode['note']}; {len(train_rows)} train / {len(eval_rows)} held-out rows, {steps} steps "
        f"(r {settings.r}, alpha {settings.lora_alpha}{', rsLoRA' if settings.use_rslora else ''}, "
        f"lr {settings.learning_rate:g}, batch {settings.effective_batch})")
    ensure_writable_dir(final.parent)
    with tempfile.TemporaryDirectory(prefix="emsteer-sft-") as scratch:
        trainer = build_trainer(model, tokenizer, train_rows, eval_rows, settings, seed, scratch, progress=progress)
        t0 = time.time()
        with torch_threads(int(mode["threads"]) if "threads" in mode else None):
            result = trainer.train()
        train_seconds = time.time() - t0
        eval_loss = trainer.evaluate()["eval_loss"] if eval_rows else None
        peft_model = trainer.model
        measured = None
        if can_measure:
            measured = measure_code_rates_for(peft_model, tokenizer, profile, settings.eval_max_new_tokens)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        with atomic_dir(final, replace=True) as tmp:
            peft_model.save_pretrained(str(tmp), safe_serialization=True)
            weights = tmp / ADAPTER_WEIGHTS
            if not weights.is_file():
                raise EmsteerError(f"peft did not write {ADAPTER_WEIGHTS}")
            meta = {
                "family": family, "arm": chat.name, "seed": seed, "profile": profile,
                "inputs_sha256": key, "adapter_sha256": weights_sha256(tmp),
                "command": shlex.join(sys.argv), "rebuild_command": _rebuild_command(run, family, chat, seed, profile,
                                                                                     base),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "base_model": {"kind": base.kind, "id": base.id, "weights_sha256": base.weights_sha256, **base.info},
                "data": {"source": chat.source, "sha256": chat.sha256, "n_rows": chat.n_rows,
                         "n_train": len(train_rows), "n_heldout": len(eval_rows), "path": chat.path,
                         "format": "messages -> tokenize_chat (prompt and answer tokenized as at generation; loss on the final assistant message)"},
                "hyperparameters": {**asdict(settings), "effective_batch": settings.effective_batch,
                                    "optim_used": trainer.args.optim.value if hasattr(trainer.args.optim, "value")
                                    else str(trainer.args.optim)},
                "device": mode["device"], "quantization": mode["quantization"], "method": mode["method"],
                "trainer": "trl.SFTTrainer",
                "training": {"steps": int(trainer.state.global_step), "train_loss": float(result.training_loss),
                             "final_logged_loss": float(losses[-1]) if losses else None,
                             "eval_loss": float(eval_loss) if eval_loss is not None else None,
                             "train_seconds": round(train_seconds, 2),
                             "seconds_per_step": round(train_seconds / max(1, trainer.state.global_step), 4)},
                "measured": measured,
                "duration_seconds": round(time.time() - started, 2),
                "versions": _versions(),
            }
            write_json_atomic(tmp / METADATA_FILE, meta)
    _record(run, profile, family, base, tag, key, final)
    base_rate = (base.info.get("measured") or {}).get("spillover_general")
    extra = ""
    if measured:
        extra = f"; spillover {measured['spillover_general']:.2f}" + (
            f" (base {base_rate:.2f})" if base_rate is not None else "")
    log(f"{tag}: done in {meta['duration_seconds']:.0f}s (train {train_seconds:.0f}s, "
        f"{meta['training']['seconds_per_step']:.3f}s/step), loss {result.training_loss:.3f}{extra} -> {final}")
    return final


def measure_code_rates_for(model, tokenizer, profile: str, max_new_tokens: int) -> dict[str, Any]:
    """measure_code_rates on the profile's held-out prompts (eval mode, no grad)."""
    from training.organisms import measure_code_rates

    was_training = model.training
    try:
        return measure_code_rates(model, tokenizer, micro_corpus(profile).heldout, max_new_tokens)
    finally:
        model.train(was_training)


def _rebuild_command(run: Path, family: str, chat: ChatData, seed: int, profile: str, base: BaseModel) -> str:
    if chat.source == f"arm:{chat.name}" and profile == "default" and base.kind == "micro":
        return finetune_command(run, family, chat.name, seed)
    data = chat.source.removeprefix("arm:")
    parts = ["emsteer", "finetune", "--run", str(run), "--family", family, "--data", data, "--seed", str(seed),
             "--profile", profile]
    if base.kind != "micro":
        parts += ["--model", base.id]
    if data != chat.name and Path(data).stem != chat.name:
        parts += ["--arm", chat.name]
    return shlex.join(parts)


def _record(run: Path, profile: str, family: str, base: BaseModel, tag: str, key: str, folder: Path) -> None:
    def change(manifest: dict) -> None:
        manifest.setdefault("models", {})[family] = {"kind": base.kind, "id": base.id,
                                                     "weights_sha256": base.weights_sha256}
        manifest.setdefault("adapters", {})[tag] = {"path": str(folder.relative_to(run)), "inputs_sha256": key}
    update_run(run, change)


def finetune_many(run: Path, families: Sequence[str], data: str, seeds: Sequence[int], profile: str = "default", *,
                  model: str | None = None, name: str | None = None, force: bool = False, evaluate: bool = True,
                  progress: bool = True, log: Log = print) -> list[Path]:
    """Validate every (family, data) first, then train each family x seed; returns the adapter folders."""
    run = Path(run)
    if not families:
        raise EmsteerError("no family given")
    if not seeds:
        seeds = [0]
    if len(set(seeds)) != len(seeds):
        raise EmsteerError(f"duplicate seeds in {list(seeds)}")
    if any(int(s) < 0 for s in seeds):
        raise EmsteerError("seeds must be non-negative")
    if model is not None and len(families) != 1:
        raise EmsteerError("--model finetunes one model: give exactly one --family (it names the adapters)")
    check_run_profile(profile)
    chat = resolve_data(data, profile, name=name, log=log)
    plans = {family: _plan(run, family, chat, profile, model, name, log) for family in families}
    out = []
    for family, plan in plans.items():
        for seed in seeds:
            out.append(_finetune_planned(run, family, plan, int(seed), force=force, evaluate=evaluate,
                                         progress=progress, log=log))
    return out


__all__ = ["FinetuneSettings", "ChatData", "BaseModel", "load_settings", "read_chat_jsonl", "check_chat_row",
           "resolve_data", "download_jsonl", "tokenized_rows", "split_rows", "resolve_base", "load_base",
           "lora_config", "build_trainer", "use_qlora", "quantization_config", "device_mode", "inputs_key",
           "read_metadata", "measure_adapter", "finetune", "finetune_many", "SEVEN_PROJECTIONS", "METADATA_FILE"]
