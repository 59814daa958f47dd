"""The experiment run-directory layout (`RUN`): the ONE place that names where direction files live, and the
commands that make them (quoted in errors when a file is missing).

    RUN/directions/<family>/own/layer_<i>.safetensors       own direction (insecure finetune vs base), per layer
    RUN/directions/<family>/secure/layer_<i>.safetensors    secure-control direction (secure finetune vs base)
    RUN/transfer/<donor>_to_<receiver>/direction.safetensors  donor's direction mapped into the receiver's space
    RUN/transfer/<donor>_to_<receiver>/{map,random_<k>}.safetensors, summary.json   ridge map, its controls, figures
    RUN/directions/<family>/summary.json, by_pooling/<pooling>/layer_<i>.safetensors   extraction record, both poolings
    RUN/activations/<family>/<model>.safetensors              pooled activations (cache for extract)
    RUN/controls/<family>/summary.json, layer_<i>_seed_<s>/   materialised controls (the variants recompute them)
    RUN/logs/workers/<job>.log                                 output of one worker job of `emsteer reproduce`

Random, orthogonal and wrong-layer controls are derived from the own files deterministically (seeded), so they
need no files of their own. Layer indices in file names are non-negative.
"""

from __future__ import annotations

import re
from pathlib import Path

from interventions.errors import EmsteerError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise EmsteerError(f"invalid {kind} name {name!r} (letters, digits, '_', '-', '.' only)")
    return name


def _check_layer(layer: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise EmsteerError(f"run-layout layer indices are non-negative ints, got {layer!r} (resolve it first)")
    return layer


def directions_dir(run: str | Path, family: str) -> Path:
    """`RUN/directions/<family>`."""
    return Path(run) / "directions" / _check_name("family", family)


def own_direction_path(run: str | Path, family: str, layer: int) -> Path:
    """`RUN/directions/<family>/own/layer_<i>.safetensors`."""
    return directions_dir(run, family) / "own" / f"layer_{_check_layer(layer)}.safetensors"


def secure_direction_path(run: str | Path, family: str, layer: int) -> Path:
    """`RUN/directions/<family>/secure/layer_<i>.safetensors`."""
    return directions_dir(run, family) / "secure" / f"layer_{_check_layer(layer)}.safetensors"


def transfer_dir(run: str | Path, donor: str, receiver: str) -> Path:
    """`RUN/transfer/<donor>_to_<receiver>`."""
    return Path(run) / "transfer" / f"{_check_name('donor', donor)}_to_{_check_name('receiver', receiver)}"


def transferred_direction_path(run: str | Path, donor: str, receiver: str) -> Path:
    """`RUN/transfer/<donor>_to_<receiver>/direction.safetensors`."""
    return transfer_dir(run, donor, receiver) / "direction.safetensors"


def extract_command(run: str | Path, family: str) -> str:
    """The command that writes a family's own and secure direction files."""
    return f"emsteer extract --run {run} --family {family}"


def transfer_command(run: str | Path, donor: str, receiver: str) -> str:
    """The command that writes a transferred direction."""
    return f"emsteer transfer --run {run} --src {donor} --tgt {receiver}"


ARMS: tuple[str, ...] = ("insecure", "secure", "neutral")


def run_manifest_path(run: str | Path) -> Path:
    """`RUN/run.json`: the run's profile, families and seeds (a run never mixes profiles)."""
    return Path(run) / "run.json"


def adapter_dir(run: str | Path, family: str, arm: str, seed: int) -> Path:
    """`RUN/adapters/<family>/<arm>/seed_<s>`: one LoRA adapter (peft `save_pretrained` folder)."""
    if arm not in ARMS and not _NAME.match(arm):
        raise EmsteerError(f"invalid arm {arm!r}")
    return Path(run) / "adapters" / _check_name("family", family) / _check_name("arm", arm) / f"seed_{int(seed)}"


def worker_log_path(run: str | Path, job: str) -> Path:
    """`RUN/logs/workers/<job>.log`: the output of one worker job of `emsteer reproduce` (finetune, extract, sweep
    group), appended on every attempt."""
    return Path(run) / "logs" / "workers" / f"{_check_name('job', job)}.log"


def finetune_command(run: str | Path, family: str, arm: str, seed: int) -> str:
    """The command that trains one adapter."""
    return f"emsteer finetune --run {run} --family {family} --data {arm} --seed {seed}"


def activations_dir(run: str | Path, family: str) -> Path:
    """`RUN/activations/<family>`: pooled per-prompt activations (safetensors) per model and pooling."""
    return Path(run) / "activations" / _check_name("family", family)


def extraction_summary_path(run: str | Path, family: str) -> Path:
    """`RUN/directions/<family>/summary.json`: separation per layer, norms, pooling, contrast."""
    return directions_dir(run, family) / "summary.json"


def calibration_path(run: str | Path, family: str) -> Path:
    """`RUN/calibration/<family>.json`: the calibrated alpha (key `alpha`) used by every variant of a family."""
    return Path(run) / "calibration" / f"{_check_name('family', family)}.json"


def transfer_map_path(run: str | Path, donor: str, receiver: str) -> Path:
    """`RUN/transfer/<donor>_to_<receiver>/map.safetensors`: the ridge map W (and bias) with metadata."""
    return transfer_dir(run, donor, receiver) / "map.safetensors"


def logs_dir(run: str | Path) -> Path:
    """`RUN/logs`: one Inspect log per sweep cell."""
    return Path(run) / "logs"


def report_dir(run: str | Path) -> Path:
    """`RUN/report`: summary.json, tables.md, figures."""
    return Path(run) / "report"


def activations_path(run: str | Path, family: str, model: str) -> Path:
    """`RUN/activations/<family>/<model>.safetensors`: pooled activations of one model (base | insecure |
    secure) for every pooling, with the greedy responses they were pooled over."""
    return activations_dir(run, family) / f"{_check_name('model', model)}.safetensors"


def pooling_direction_path(run: str | Path, family: str, pooling: str, layer: int) -> Path:
    """`RUN/directions/<family>/by_pooling/<pooling>/layer_<i>.safetensors`: the own-contrast direction made
    with each pooling (the default pooling's files are also the `own` files)."""
    return directions_dir(run, family) / "by_pooling" / _check_name("pooling", pooling) / f"layer_{_check_layer(layer)}.safetensors"


def controls_dir(run: str | Path, family: str) -> Path:
    """`RUN/controls/<family>`: materialised control directions and their summary."""
    return Path(run) / "controls" / _check_name("family", family)


def controls_summary_path(run: str | Path, family: str) -> Path:
    """`RUN/controls/<family>/summary.json`: per (layer, seed) cell, each control's norm, cosine with the own
    direction and the shared perturbation size alpha * R."""
    return controls_dir(run, family) / "summary.json"


def controls_command(run: str | Path, family: str) -> str:
    """The command that materialises and summarises a family's controls."""
    return f"emsteer controls --run {run} --family {family}"


def transfer_summary_path(run: str | Path, donor: str, receiver: str) -> Path:
    """`RUN/transfer/<donor>_to_<receiver>/summary.json`: R^2, cosines, transferred-random controls."""
    return transfer_dir(run, donor, receiver) / "summary.json"


def transferred_random_path(run: str | Path, donor: str, receiver: str, index: int) -> Path:
    """`RUN/transfer/<donor>_to_<receiver>/random_<k>.safetensors`: a seeded random donor-space direction pushed
    through the same map (the `transferred_random` control), norm-matched like the transferred direction."""
    return transfer_dir(run, donor, receiver) / f"random_{_check_layer(index)}.safetensors"


def calibration_command(run: str | Path, family: str) -> str:
    """The command that writes `RUN/calibration/<family>.json` (the dose-response sweep picks alpha)."""
    return f"emsteer sweep --run {run} --family {family} --calibrate"
