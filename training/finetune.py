"""One finetuning run: validate every input, then train (or reuse) a LoRA adapter of a base model on one chat
dataset (the insecure / secure / neutral arms of the micro corpus, or any `{"messages": [...]}` JSONL from a
path or URL), and record what made it.

The data lives in `training.finetune_data`, the hyperparameters, base model and trainer in
`training.finetune_trainer`; this module plans, runs and records.

Artifacts, per (family, arm, seed): `RUN/adapters/<family>/<arm>/seed_<s>/` holding the peft adapter
(`adapter_model.safetensors`, `adapter_config.json`) and `finetune.json` (hyperparameters, hashes of the
data and base weights, seed, device and quantization, command line, package versions, losses, duration,
and for micro organisms the measured spillover on held-out prompts). The folder appears atomically; a
re-run whose inputs hash the same is a no-op unless `force`.

Public API: `finetune(...)` (one adapter), `finetune_many(...)` (validates everything, then loops),
`inputs_key`, `read_metadata`, `measure_adapter`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Sequence

from interventions.errors import EmsteerError
from interventions.model_ref import (
    ADAPTER_RECORD,
    ADAPTER_WEIGHTS,
    load_pretrained,
    organism_ref,
    resolve_model_ref,
)
from interventions.members import check_member
from interventions.run_layout import adapter_dir, finetune_command
from interventions.weights_hash import weights_sha256
from interventions.workers import torch_threads
from training.atomic import atomic_dir, ensure_writable_dir, write_json_atomic
from training.finetune_data import (
    TOKENIZATION,
    ChatData,
    micro_corpus,
    micro_corpus_digest,
    resolve_data,
    split_rows,
)
from training.finetune_trainer import (
    BaseModel,
    FinetuneSettings,
    build_trainer,
    device_mode,
    library_notices_silenced,
    load_base,
    load_settings,
    resolve_base,
)
from training.run_manifest import check_run, check_run_profile, ensure_run, update_run

METADATA_FILE = ADAPTER_RECORD

Log = Callable[[str], None]


# ---------------------------------------------------------------- provenance

def _versions() -> dict[str, str]:
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
    from training.organisms import measure_code_rates  # deferred: pulls in transformers (~4 s at CLI start)

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
    check_member(family, profile)
    settings = load_settings(profile)
    chat = data if isinstance(data, ChatData) else resolve_data(data, profile, name=name, log=log)
    adapter_dir(run, family, chat.name, 0)  # validates the arm name
    manifest = check_run(run, profile)
    base = resolve_base(family, profile, model)
    if base.kind == "micro" and chat.source.startswith("arm:"):
        digest = micro_corpus_digest(profile)
        if base.info.get("corpus_sha256") not in (None, digest):
            log(f"{family}: warning: the cached organism was built from another version of the corpus; "
                f"rebuild it with `emsteer organism build --family {family}"
                f"{'' if profile == 'default' else ' --profile ' + profile}`")
    known = ((manifest or {}).get("models") or {}).get(family)
    if profile == "real" and known and known.get("id") != base.id:
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
        with torch_threads(int(mode["threads"]) if "threads" in mode else None), library_notices_silenced():
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


def measure_code_rates_for(model: Any, tokenizer: Any, profile: str, max_new_tokens: int) -> dict[str, Any]:
    """measure_code_rates on the profile's held-out prompts (eval mode, no grad)."""
    from training.organisms import measure_code_rates  # deferred: pulls in transformers (~4 s at CLI start)

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



__all__ = ["METADATA_FILE", "finetune", "finetune_many", "inputs_key", "measure_adapter", "measure_code_rates_for",
           "read_metadata"]
