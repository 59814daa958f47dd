"""Read the organism profiles and per-family architectures from configs/organisms.toml."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from typing import Any

from interventions.errors import EmsteerError
from interventions.paths import FAMILIES, check_family, check_profile, configs_dir
from training.corpus import CorpusSettings


@dataclass(frozen=True)
class Profile:
    """One profile's corpus sizes, base-training settings and evaluation length."""
    name: str
    corpus: CorpusSettings
    train_steps: int
    batch_size: int
    learning_rate: float
    warmup_ratio: float
    max_length: int
    eval_max_new_tokens: int


def _config() -> dict[str, Any]:
    path = configs_dir() / "organisms.toml"
    if not path.is_file():
        raise EmsteerError(f"missing config file {path}")
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def load_profile(name: str) -> Profile:
    """The named profile (`default` or `tiny`)."""
    check_profile(name)
    raw = dict(_config()["profiles"][name])
    corpus_keys = {f.name for f in fields(CorpusSettings)}
    corpus = CorpusSettings(**{k: raw.pop(k) for k in list(raw) if k in corpus_keys})
    return Profile(name=name, corpus=corpus, **raw)


def family_architecture(family: str, profile: str) -> tuple[str, dict[str, Any]]:
    """(transformers class name, config overrides) of one family in one profile."""
    check_family(family)
    check_profile(profile)
    fam = _config()["families"][family]
    return fam["class"], dict(fam[profile])


def resolve_families(spec: str) -> list[str]:
    """`all` or one family name (comma-separated lists allowed) -> list of families."""
    if spec == "all":
        return list(FAMILIES)
    return [check_family(f.strip()) for f in spec.split(",") if f.strip()]
