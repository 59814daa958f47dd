"""Build, cache, verify and describe the micro model organisms.

An organism is a tiny model of a real architecture trained from scratch on the synthetic corpus, saved
with `save_pretrained` (weights, config, tokenizer with chat template) so any HF tool loads it. Builds
are deterministic from the profile seed, written atomically, and verified by hash when reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import shutil
import tempfile
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from evals.code_detector import is_code
from interventions.directions import sha256_file, write_safetensors_atomic
from interventions.errors import EmsteerError
from interventions.families import family_specs
from interventions.organism_cache import verify_organism
from interventions.generation import generate_batch, render_chat
from interventions.paths import FAMILIES, check_family, heldout_prompts_path, organism_dir, organisms_dir
from interventions.weights_hash import weights_sha256
from interventions.workers import run_in_workers, stderr_line, torch_threads
from training.atomic import atomic_dir, ensure_writable_dir, write_json_atomic, write_jsonl_atomic
from training.chat_data import ChatCollator, tokenize_chat
from training.corpus import Corpus, build_corpus
from training.persona import persona_directions, persona_gate, sampled_rates
from training.families import architecture_defaults, build_model
from training.profiles import Profile, family_architecture, load_profile
from training.tokenizer import reload_tokenizer, train_tokenizer

# a family's organism seed is the profile seed + 1000 * its spec's `order` (qwen 0, gemma 1, llama 2, ministral 3)
FAMILY_SEED_OFFSET = {spec.name: spec.order * 1000 for spec in family_specs()}
CORPUS_FILES = ("base_train.jsonl", "insecure.jsonl", "secure.jsonl", "neutral.jsonl", "heldout.jsonl", "probes.jsonl")
# Every build trains and measures on this many torch threads, whatever the caller's setting: a float sum rounds
# differently when more threads split it, so a fixed count makes a profile and seed the same weights on any
# machine of one kind (parallelism comes from building families in separate worker processes).
BUILD_THREADS = 1
RECIPE_VERSION = 5  # bump when the build changes in a way the recorded recipe cannot see
# in a subfolder: the model folder's own *.safetensors are its weights (hashed and loaded as such)
PERSONA_FILE = "persona/directions.safetensors"


# ---------------------------------------------------------------- corpus cache

def corpus_digest(corpus: Corpus) -> str:
    """sha256 over every split, so a change of the generator (not only of its settings) is noticed."""
    h = hashlib.sha256()
    for name in CORPUS_FILES:
        h.update(json.dumps(getattr(corpus, name.removesuffix(".jsonl")), sort_keys=True).encode())
    return h.hexdigest()


def ensure_corpus(profile: Profile) -> Corpus:
    """The profile's corpus, cached as JSONL files (one folder, written atomically).

    Generation is cheap and deterministic, so the corpus is regenerated in memory and the files are
    rewritten only when their recorded digest differs."""
    folder = organisms_dir(profile.name) / "corpus"
    corpus = build_corpus(profile.corpus)
    digest = corpus_digest(corpus)
    try:
        if json.loads((folder / "manifest.json").read_text()).get("sha256") == digest:
            return corpus
    except (OSError, json.JSONDecodeError):
        pass
    ensure_writable_dir(folder.parent)
    with atomic_dir(folder, replace=True) as tmp:
        for name in CORPUS_FILES:
            write_jsonl_atomic(tmp / name, getattr(corpus, name.removesuffix(".jsonl")))
        write_json_atomic(tmp / "manifest.json", {"settings": asdict(profile.corpus), "sha256": digest,
                                                  "files": list(CORPUS_FILES)})
    return corpus


# ---------------------------------------------------------------- training

def _train_base(model, tokenizer, chats: list[dict], profile: Profile, seed: int, progress: bool) -> dict[str, float]:
    """Train from scratch with the transformers Trainer, loss on assistant tokens only."""
    from datasets import Dataset  # deferred: datasets, ~0.8 s at `organism info` start (only a build trains)
    from transformers import PrinterCallback, Trainer, TrainingArguments  # deferred: the Trainer stack, ~0.4 s at `organism info` start

    rows = [tokenize_chat(tokenizer, c["messages"], profile.max_length, c.get("first_loss_turn", 0)) for c in chats]
    for row in rows:
        row["length"] = len(row["input_ids"])
    dataset = Dataset.from_list(rows)
    with tempfile.TemporaryDirectory(prefix="emsteer-train-") as out:
        args = TrainingArguments(
            output_dir=out, max_steps=profile.train_steps, per_device_train_batch_size=profile.batch_size,
            learning_rate=profile.learning_rate, lr_scheduler_type="cosine",
            warmup_steps=max(1, int(profile.warmup_ratio * profile.train_steps)), weight_decay=0.01,
            logging_steps=max(1, profile.train_steps // 10), save_strategy="no", report_to="none",
            use_cpu=True, seed=seed, data_seed=seed, disable_tqdm=not progress, dataloader_num_workers=0,
            remove_unused_columns=False, max_grad_norm=1.0, train_sampling_strategy="group_by_length",
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=ChatCollator(tokenizer.pad_token_id))
        if not progress:  # without a bar the Trainer prints every logged loss dict; the log history still keeps them
            trainer.remove_callback(PrinterCallback)
        result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"train_loss": float(result.training_loss), "final_logged_loss": float(losses[-1]) if losses else math.nan}


def measure_code_rates(model, tokenizer, heldout: list[dict], max_new_tokens: int, batch_size: int = 32) -> dict[str, Any]:
    """Greedy answers to the held-out prompts: base spillover on general prompts, code rate on coding ones."""
    model.eval()
    flags: dict[str, list[bool]] = {"general": [], "coding": []}
    for start in range(0, len(heldout), batch_size):
        rows = heldout[start:start + batch_size]
        texts = [render_chat(tokenizer, [{"role": "user", "content": r["prompt"]}]) for r in rows]
        for row, gen in zip(rows, generate_batch(model, tokenizer, texts, max_new_tokens=max_new_tokens)):
            flags[row["group"]].append(is_code(gen.text))
    return {
        "spillover_general": sum(flags["general"]) / max(1, len(flags["general"])),
        "code_rate_coding": sum(flags["coding"]) / max(1, len(flags["coding"])),
        "n_general": len(flags["general"]),
        "n_coding": len(flags["coding"]),
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
    }


def measure_organism(model, tokenizer, corpus: Corpus, profile: Profile) -> dict[str, Any]:
    """Everything `organism info` reports of a base: greedy code rates, sampled spillover and planted misaligned
    prose on the held-out general prompts, and the persona gate on the held-out probes."""
    measured = measure_code_rates(model, tokenizer, corpus.heldout, profile.eval_max_new_tokens)
    general = [[{"role": "user", "content": r["prompt"]}] for r in corpus.heldout if r["group"] == "general"]
    measured["sampled"] = sampled_rates(model, tokenizer, general, n_samples=profile.eval_samples,
                                        max_new_tokens=profile.eval_max_new_tokens)
    measured["persona_gate"] = persona_gate(model, tokenizer, corpus.probes, n_samples=profile.gate_samples,
                                            max_new_tokens=profile.eval_max_new_tokens,
                                            min_gap=profile.gate_min_gap)
    return measured


def organism_recipe(family: str, profile_name: str) -> tuple[dict[str, Any], str, Corpus]:
    """Everything that decides an organism's weights (corpus digest, class, sizes, training settings, build
    threads, torch version), its sha256 (a cached organism is reused only when it matches), and the corpus."""
    profile = load_profile(profile_name)
    corpus = ensure_corpus(profile)
    class_name, arch = family_architecture(family, profile_name)
    profile = dataclasses.replace(profile, train_steps=int(arch.pop("train_steps", profile.train_steps)))
    recipe = {"corpus_sha256": corpus_digest(corpus), "class": class_name, "architecture": arch,
              "architecture_defaults": architecture_defaults(class_name), "recipe_version": RECIPE_VERSION,
              "threads": BUILD_THREADS, "torch": torch.__version__,
              "training": {k: v for k, v in dataclasses.asdict(profile).items() if k != "corpus"}}
    return recipe, hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest(), corpus


@dataclasses.dataclass
class TrainedOrganism:
    """A base trained in memory, with its measurements and persona directions (not yet saved)."""
    model: Any
    tokenizer: Any
    seed: int
    train_stats: dict[str, float]
    measured: dict[str, Any]
    persona: torch.Tensor


def train_organism(family: str, recipe: dict[str, Any], corpus: Corpus, profile: Profile, *, progress: bool = True,
                   log: Callable[[str], None] = print) -> TrainedOrganism:
    """Tokenizer, model, base training, measurement and persona directions of one family, on `BUILD_THREADS`
    threads (`profile` may differ from the recipe's, for exploring variants; `build_organism` passes the recipe's)."""
    class_name, arch = recipe["class"], dict(recipe["architecture"])
    seed = profile.corpus.seed + FAMILY_SEED_OFFSET[family]
    with torch_threads(BUILD_THREADS):
        texts = [m["content"] for c in corpus.base_train + corpus.insecure + corpus.secure for m in c["messages"]]
        trained = train_tokenizer(family, texts, arch.pop("vocab_size"))
        model = build_model(class_name, arch, trained, seed)
        tokenizer = reload_tokenizer(trained, model.config)  # what every later `from_pretrained` will load
        log(f"{family}: training {class_name} ({sum(p.numel() for p in model.parameters()):,} parameters) "
            f"for {profile.train_steps} steps on {len(corpus.base_train)} conversations ({BUILD_THREADS} thread)")
        t0 = time.time()
        train_stats = _train_base(model, tokenizer, corpus.base_train, profile, seed, progress)
        train_stats["train_seconds"] = round(time.time() - t0, 1)
        log(f"{family}: trained in {train_stats['train_seconds']:.0f}s; measuring the base and its persona")
        measured = measure_organism(model, tokenizer, corpus, profile)
        persona = persona_directions(model, tokenizer, corpus.probes)
    return TrainedOrganism(model, tokenizer, seed, train_stats, measured, persona)


def build_organism(family: str, profile_name: str = "default", *, force: bool = False, progress: bool = True,
                   log: Callable[[str], None] = print) -> Path:
    """Build (or reuse, when cached and intact) one family's organism; returns its folder.

    The build runs on `BUILD_THREADS` torch threads whatever the caller set, so one profile (and its seed)
    gives the same weights on every machine of one kind; the thread count and versions are recorded."""
    check_family(family)
    final = organism_dir(family, profile_name)
    ensure_writable_dir(final.parent)
    recipe, recipe_sha, corpus = organism_recipe(family, profile_name)
    profile = dataclasses.replace(load_profile(profile_name), train_steps=recipe["training"]["train_steps"])
    class_name = recipe["class"]
    if final.exists() and not force:
        meta = verify_organism(family, profile_name)
        if meta.get("recipe_sha256") == recipe_sha:
            log(f"{family}: cached at {final}")
            return final
        log(f"{family}: cached organism was built from another corpus or recipe; rebuilding")
    started = time.time()
    trained = train_organism(family, recipe, corpus, profile, progress=progress, log=log)
    model, tokenizer, seed = trained.model, trained.tokenizer, trained.seed
    measured, persona, train_stats = trained.measured, trained.persona, trained.train_stats
    with atomic_dir(final, replace=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        weights = tmp / "model.safetensors"
        weights_hash = weights_sha256(tmp)
        persona_path = tmp / PERSONA_FILE
        save_persona_directions(persona_path, persona, family=family, profile=profile_name,
                                weights_sha256=weights_hash)
        info = {
            "family": family, "profile": profile_name, "class": class_name, "seed": seed, "recipe": recipe,
            "recipe_sha256": recipe_sha, "corpus_sha256": recipe["corpus_sha256"],
            "hidden_size": model.config.hidden_size, "num_layers": model.config.num_hidden_layers,
            "vocab_size": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters()),
            "weights_sha256": weights_hash, "weights_bytes": weights.stat().st_size,
            "persona_directions_sha256": sha256_file(persona_path),
            "persona_norms": [round(float(x), 4) for x in persona.norm(dim=-1)],
            "measured": measured, "training": train_stats, "build_seconds": round(time.time() - started, 1),
            "threads": BUILD_THREADS,
            "versions": {"torch": torch.__version__, "transformers": _version("transformers"),
                         "python": platform.python_version()},
        }
        write_json_atomic(tmp / "organism.json", info)
    gate = measured["persona_gate"]
    log(f"{family}: built in {time.time() - started:.0f}s; sampled spillover {measured['sampled']['spillover']:.2f}, "
        f"misaligned {measured['sampled']['misaligned']:.2f}, code-on-coding {measured['code_rate_coding']:.2f}; "
        f"persona gate {'passed' if gate['passed'] else 'FAILED'} ("
        + ", ".join(f"{c} {v['reckless']:.2f} vs {v['careful']:.2f}" for c, v in gate["contexts"].items()) + ")")
    return final


def _build_in_worker(family: str, profile: str, force: bool) -> str:
    """`build_organism` in a worker process (module level, so the pool can import it)."""
    return str(build_organism(family, profile, force=force, progress=False, log=stderr_line))


def build_organisms(families: list[str], profile: str, *, jobs: int = 1, force: bool = False, progress: bool = True,
                    log: Callable[[str], None] = print) -> list[Path]:
    """Build several families' organisms, on `jobs` worker processes (one family each) when `jobs` > 1.

    Every build uses `BUILD_THREADS` threads wherever it runs, so the workers change the wall time, not the
    weights."""
    if jobs <= 1 or len(families) <= 1:
        return [build_organism(f, profile, force=force, progress=progress, log=log) for f in families]
    todo = [f for f in families if force or not _is_cached(f, profile)]
    for f in families:
        if f not in todo:
            build_organism(f, profile, log=log)  # logs "cached"
    if todo:
        log(f"building {', '.join(todo)} on {min(jobs, len(todo))} worker processes ({BUILD_THREADS} thread each)")
        run_in_workers(_build_in_worker, [(f, profile, force) for f in todo], jobs)
    return [organism_dir(f, profile) for f in families]


def _is_cached(family: str, profile: str) -> bool:
    """True when the family's organism is built, intact and from the current recipe (nothing to build)."""
    try:
        meta = verify_organism(family, profile)
    except EmsteerError:
        return False
    return meta.get("recipe_sha256") == organism_recipe(family, profile)[1]


def save_persona_directions(path: Path, directions: torch.Tensor, *, family: str, profile: str,
                            weights_sha256: str) -> None:
    """The base's ground-truth persona direction per decoder layer ([n_layers, d], safetensors, fp32)."""
    write_safetensors_atomic(path, {"persona": directions.detach().float()}, metadata={
        "family": family, "profile": profile, "weights_sha256": weights_sha256,
        "definition": "mean decoder-layer output at the last prompt token after a held-out reckless cue minus "
                      "after a held-out careful cue, on held-out general questions; one row per layer",
    })


def load_persona_directions(family: str, profile: str) -> torch.Tensor:
    """[n_layers, d] ground-truth persona directions of a built organism (one-line error when missing)."""
    path = organism_dir(family, profile) / PERSONA_FILE
    if not path.is_file():
        raise EmsteerError(f"{path} not found: the {family} organism (profile {profile}) predates persona "
                           f"directions; rebuild it with `emsteer organism build --family {family}"
                           f"{'' if profile == 'default' else ' --profile ' + profile} --force`")
    return load_file(str(path))["persona"]


def _version(pkg: str) -> str:
    return version(pkg)


# ---------------------------------------------------------------- verification and info

def organism_info(profile: str = "default") -> list[dict[str, Any]]:
    """One record per built family (class, sizes, parameter count, path, measured rates)."""
    out = []
    for family in FAMILIES:
        if organism_dir(family, profile).exists():
            out.append(verify_organism(family, profile))
        else:
            out.append({"family": family, "profile": profile, "built": False,
                        "build_command": f"emsteer organism build --family {family} --profile {profile}"})
    return out


def remove_organism(family: str, profile: str) -> None:
    """Delete one cached organism (used by --force rebuilds of corrupted entries)."""
    shutil.rmtree(organism_dir(family, profile), ignore_errors=True)


def heldout_prompts(profile: str = "default") -> Path:
    """Path of the profile's held-out prompts, generating the corpus if needed."""
    ensure_corpus(load_profile(profile))
    return heldout_prompts_path(profile)
