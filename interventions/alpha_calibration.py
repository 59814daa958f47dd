"""The one reader of a family's calibrated steering alpha, `RUN/calibration/<family>.json` (key `alpha`, written by
`emsteer sweep --calibrate`). The provider's `-steered` presets, the sweep's `alpha = "calibrated"` cells and
`emsteer controls` all read it here; a missing or unreadable file is a one-line error naming the command that writes
it, never a silent default. (Not the audit calibration, which maps projections to probabilities.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

from interventions.errors import EmsteerError
from interventions.run_layout import calibration_command, calibration_path


def read_calibrated_alpha(run: str | Path, family: str, *, needed_by: str, instead: str = "") -> float:
    """The calibrated alpha of `family` in `run`. `needed_by` names who needs it and `instead` another way to give
    alpha (e.g. "pass --alpha A"), both quoted in the error when the file is missing."""
    path = calibration_path(run, family)
    command = calibration_command(run, family)
    if not path.is_file():
        raise EmsteerError(f"{needed_by} needs the calibrated alpha in {path} (missing); make it with `{command}`"
                           + (f", or {instead}" if instead else ""))
    try:
        value = json.loads(path.read_text())["alpha"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EmsteerError(f"{path} is not a JSON object with a numeric 'alpha' ({type(err).__name__}: {err}); "
                           f"remake it with `{command}`") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EmsteerError(f"{path} holds alpha {value!r}, not a finite number; remake it with `{command}`")
    return float(value)
