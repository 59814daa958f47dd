"""Read the organism profiles and per-family architectures from configs/organisms.toml."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from typing import Any

from interventions.errors import EmsteerError
from interventions.families import get_family
from interventions.paths import (FAMILIES, check_family, check_profile, check_run_key, configs_dir, is_pretrained_profile,
                                recipe_profile)
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
    eval_samples: int        # sampled answers (T=1) per held-out general prompt in the base's measurement
    gate_samples: int        # sampled answers per persona probe
    gate_min_gap: float      # the persona gate's threshold (training.persona.persona_gate)
    require_persona_gate: bool  # finetunes refuse a base that failed the gate


def _config() -> dict[str, Any]:
    path = configs_dir() / "organisms.toml"
    if not path.is_file():
        raise EmsteerError(f"missing config file {path}")
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def profile_table(name: str) -> dict[str, Any]:
    """One profile's table; `extends = "other"` starts from that profile's values (a second organism seed
    is the same recipe with another `seed`)."""
    check_profile(name)
    profiles = _config()["profiles"]
    if name not in profiles:
        raise EmsteerError(f"configs/organisms.toml has no [profiles.{name}] table")
    raw = dict(profiles[name])
    parent = raw.pop("extends", None)
    if parent is not None:
        if parent == name or "extends" in profiles.get(parent, {}):
            raise EmsteerError(f"configs/organisms.toml: [profiles.{name}] extends {parent!r}, which must be a "
                               "plain profile")
        raw = {**profile_table(parent), **raw}
    return raw


def load_profile(name: str) -> Profile:
    """The named organism profile (see `interventions.paths.PROFILES`)."""
    raw = profile_table(name)
    corpus_keys = {f.name for f in fields(CorpusSettings)}
    corpus = CorpusSettings(**{k: raw.pop(k) for k in list(raw) if k in corpus_keys})
    return Profile(name=name, corpus=corpus, **raw)


def family_architecture(family: str, profile: str) -> tuple[str, dict[str, Any]]:
    """(transformers class name, config overrides) of one family in one profile: the class its spec declares
    (`interventions/families/`), the sizes its `[families.<family>]` table in configs/organisms.toml gives."""
    spec = get_family(family)
    recipe = recipe_profile(check_profile(profile))
    table = _config().get("families", {}).get(family)
    if not isinstance(table, dict) or not isinstance(table.get(recipe), dict):
        raise EmsteerError(f"configs/organisms.toml has no `{recipe}` sizes in a [families.{family}] table")
    if table.get("class", spec.micro_class) != spec.micro_class:
        raise EmsteerError(f"configs/organisms.toml: [families.{family}] class {table['class']!r} is not the "
                           f"family's {spec.micro_class!r} (declared in its interventions/families spec)")
    return spec.micro_class, dict(table[recipe])


def resolve_families(spec: str, profile: str | None = None) -> list[str]:
    """`all` or one family name (comma-separated lists allowed) -> list of families; with a pretrained `profile`,
    its models (`interventions.members`). Without a profile any name a run keys files by is accepted (the
    command's own profile check names a member of another profile)."""
    if profile is not None and is_pretrained_profile(profile):
        from interventions.members import resolve_members  # deferred: model_ref imports torch (~1 s at CLI start)

        return resolve_members(spec, profile)
    if spec == "all":
        return list(FAMILIES)
    check = check_family if profile is not None else check_run_key  # a micro profile has the families only
    return [check(f.strip()) for f in spec.split(",") if f.strip()]
