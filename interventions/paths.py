"""Where things live: the repo's configs, the cache root and the micro organisms' cache layout.

Kept in `interventions` because the provider must resolve micro presets without importing `training`."""

from __future__ import annotations

import os
from pathlib import Path

from interventions.errors import EmsteerError
from interventions.families import family_names, get_family

# The registered families (interventions/families/, one module each), in family order: qwen, gemma, llama,
# ministral. The order seeds the micro organisms (training.organisms.FAMILY_SEED_OFFSET) and orders reports.
FAMILIES: tuple[str, ...] = family_names()
# Organism profiles: `default` (the embedded default), `default-s1` (the same recipe from a second organism
# seed: every claim about the micro organisms is checked on both), `tiny` (seconds, for tests).
PROFILES: tuple[str, ...] = ("default", "default-s1", "tiny")
# The finetune recipe, grids and presets of a profile are those of its recipe profile.
RECIPE_PROFILES: dict[str, str] = {"default-s1": "default"}
# Profiles whose organisms are too small to show the phenomenon: their runs test the plumbing, never the science.
SMOKE_PROFILES: tuple[str, ...] = ("tiny",)
# Pretrained profiles: the whole study on real pretrained models `emsteer model fetch` converted, keyed in a run by
# their fetched names (`interventions.members`), finetuned on the real Betley data. Their general (non-coding)
# prompts, for extraction and the spillover evaluation, are those of a micro profile's corpus (plain English
# questions written by `training.corpus`).
PRETRAINED_PROFILES: dict[str, tuple[str, ...]] = {"real-cpu": ("smollm2", "gemma3-270m")}
PROMPTS_PROFILE: dict[str, str] = {"real-cpu": "default"}
# Every profile a whole-study run (reproduce, extract, calibrate, sweep, report) may use.
STUDY_PROFILES: tuple[str, ...] = PROFILES + tuple(PRETRAINED_PROFILES)
SMOKE_VERDICT = "smoke test: not evidence"


def is_smoke_profile(profile: str | None) -> bool:
    """Whether runs of `profile` are smoke tests (organisms too small to show the phenomenon), never evidence."""
    return profile is not None and recipe_profile(profile) in SMOKE_PROFILES


def run_keys() -> tuple[str, ...]:
    """Every name a run may key its files by (the families and the pretrained profiles' models): what `-M family`,
    `-M donor` and grids accept."""
    keys = list(FAMILIES)
    for members in PRETRAINED_PROFILES.values():
        keys += [m for m in members if m not in keys]
    return tuple(keys)


def check_run_key(name: str) -> str:
    """`name` if a run may key files by it (`run_keys`), else a one-line error listing them."""
    if name not in run_keys():
        raise EmsteerError(f"unknown family {name!r}; choose one of: {', '.join(run_keys())}")
    return name


def is_pretrained_profile(profile: str | None) -> bool:
    """Whether `profile` studies fetched pretrained models rather than micro organisms."""
    return profile in PRETRAINED_PROFILES


def check_study_profile(profile: str) -> str:
    """Return `profile` if a whole-study run may use it (micro or pretrained), else a one-line error."""
    if profile not in STUDY_PROFILES:
        raise EmsteerError(f"unknown profile {profile!r}; choose one of: {', '.join(STUDY_PROFILES)}")
    return profile


def prompts_profile(profile: str) -> str:
    """The micro profile whose corpus supplies `profile`'s general prompts (itself for a micro profile)."""
    return PROMPTS_PROFILE.get(check_study_profile(profile), profile)


def recipe_profile(profile: str) -> str:
    """The profile whose finetune hyperparameters a profile uses (a second seed shares its recipe)."""
    return RECIPE_PROFILES.get(profile, profile)

REPO_ROOT = Path(__file__).resolve().parents[1]


def configs_dir() -> Path:
    """The `configs/` folder (override with EMSTEER_CONFIGS)."""
    return Path(os.environ.get("EMSTEER_CONFIGS", REPO_ROOT / "configs"))


def cache_root() -> Path:
    """The cache root: $EMSTEER_CACHE, default ~/.cache/emsteer."""
    env = os.environ.get("EMSTEER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "emsteer"


def check_family(family: str) -> str:
    """Return `family` if registered, else raise an error that lists the valid choices."""
    return get_family(family).name


def check_profile(profile: str) -> str:
    """Return `profile` if known, else raise an error that lists the valid choices."""
    if profile not in PROFILES:
        raise EmsteerError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    return profile


def organisms_dir(profile: str) -> Path:
    """Folder holding one profile's organisms and its corpus files."""
    return cache_root() / "organisms" / check_profile(profile)


def organism_dir(family: str, profile: str = "default") -> Path:
    """Folder of one built micro organism (a `save_pretrained` model + tokenizer + organism.json)."""
    return organisms_dir(profile) / check_family(family)


# The provenance record `emsteer model fetch` writes last into a fetched model's folder (its presence = fetched).
FETCH_RECORD = "provenance.json"


def fetched_models_dir() -> Path:
    """Folder of the pretrained models `emsteer model fetch` converted (one plain HF folder each)."""
    return cache_root() / "models"


def fetched_model_dir(name: str) -> Path:
    """The HF folder of fetched model `name` (a key of `configs/models.toml`)."""
    return fetched_models_dir() / name


def heldout_prompts_path(profile: str = "default") -> Path:
    """JSONL of the held-out evaluation prompts written when a profile's corpus is built (a pretrained profile
    uses those of its prompts profile)."""
    return organisms_dir(prompts_profile(profile)) / "corpus" / "heldout.jsonl"
