"""The experiment run-directory layout (`RUN`): the ONE place that names where direction files live, and the
commands that make them (quoted in errors when a file is missing).

    RUN/directions/<family>/own/layer_<i>.safetensors       own direction (insecure finetune vs base), per layer
    RUN/directions/<family>/secure/layer_<i>.safetensors    secure-control direction (secure finetune vs base)
    RUN/transfer/<donor>_to_<receiver>/direction.safetensors  donor's direction mapped into the receiver's space

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
