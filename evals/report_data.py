"""Read a run's sweep logs into one table of per-sample results, checking that cells agree on provenance.

`load_cells(run, grid)` reads `RUN/logs/<grid>/*.eval` with `inspect_ai.analysis` (one row per sample: cell,
family, kind, variant, arm, seed, alpha, prompt id, group, is_code, well_formed) and the logs' headers for
provenance (model args with the sha256 of every file and the resolved intervention). It refuses to mix:
two logs for one cell with different provenance, or two cells of one family and variant whose direction
files differ, end in one error line that names them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from evals.sweep import CELLS_FILE
from interventions.errors import EmsteerError
from interventions.run_layout import logs_dir

__all__ = ["CellTable", "load_cells", "provenance_of"]


@dataclass
class CellTable:
    """Per-sample rows of every finished cell, and each cell's header (label, provenance, log path)."""

    samples: pd.DataFrame
    cells: dict[str, dict[str, Any]]


def provenance_of(model_args: dict[str, Any]) -> dict[str, Any]:
    """The parts of a cell's model args that identify what ran: file hashes and the intervention."""
    resolved = model_args.get("resolved") or {}
    intervention = resolved.get("intervention")
    direction_sha = None
    if isinstance(intervention, dict):
        direction_sha = intervention.get("direction_sha256")
    return {"sha256": resolved.get("sha256") or {}, "intervention": intervention, "direction_sha256": direction_sha}


def _direction_key(prov: dict[str, Any]) -> str | None:
    iv = prov.get("intervention")
    if not isinstance(iv, dict):
        return None
    return json.dumps({"sha256": iv.get("direction_sha256"), "sources": iv.get("direction_sources")},
                      sort_keys=True, default=str)


def _local(location: str) -> str:
    return location[len("file://"):] if location.startswith("file://") else location


def load_cells(run: str | Path, grid: str) -> CellTable:
    """Every successful cell log of `RUN/logs/<grid>`, with the provenance checks above."""
    from inspect_ai.analysis import samples_df  # deferred: inspect_ai, ~1.3 s at `emsteer reproduce` start (bad input too)
    from inspect_ai.log import list_eval_logs, read_eval_log  # deferred: inspect_ai, as above

    folder = logs_dir(run) / grid
    if not folder.is_dir():
        raise EmsteerError(f"no sweep logs in {folder}: run `emsteer sweep --run {run} --grid {grid}` first")
    infos = [i for i in list_eval_logs(str(folder))]
    wanted: set[str] | None = None
    listing = folder / CELLS_FILE
    if listing.is_file():  # the latest sweep's cells: older cells of an edited grid stay out of the report
        try:
            wanted = {c["cell"] for c in json.loads(listing.read_text())["cells"]}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise EmsteerError(f"{listing} is unreadable ({err}); re-run the sweep to rewrite it") from None
    cells: dict[str, dict[str, Any]] = {}
    paths: list[str] = []
    for info in infos:
        header = read_eval_log(info, header_only=True)
        if header.status != "success":
            continue
        label = (header.eval.metadata or {}).get("cell")
        if not isinstance(label, dict) or "cell" not in label:
            continue
        prov = provenance_of(dict(header.eval.model_args or {}))
        name = label["cell"]
        if wanted is not None and name not in wanted:
            continue
        if name in cells:
            if json.dumps(cells[name]["provenance"], sort_keys=True, default=str) != json.dumps(prov, sort_keys=True, default=str):
                raise EmsteerError(f"cell {name} has two logs with different provenance ({cells[name]['log']} and "
                                   f"{header.location}): files changed between runs; move the older log out of {folder}")
            continue  # a duplicate of the same cell (e.g. a retry): keep the first
        cells[name] = {"label": label, "provenance": prov, "log": _local(header.location),
                       "model_args": header.eval.model_args}
        paths.append(_local(header.location))
    if not cells:
        raise EmsteerError(f"no finished cell logs in {folder}: run `emsteer sweep --run {run} --grid {grid}`")
    _check_variant_directions(cells)
    df = samples_df(paths, quiet=True)
    by_log = {c["log"]: name for name, c in cells.items()}
    df["log"] = df["log"].map(_local)
    df = df[df["log"].isin(by_log)].copy()
    df["cell"] = df["log"].map(by_log)
    for key in ("family", "kind", "variant", "arm", "seed", "alpha_value", "donor", "control_seed"):
        df[key] = df["cell"].map(lambda n, k=key: cells[n]["label"].get(k))
    df = df.rename(columns={"id": "prompt", "metadata_group": "group", "metadata_category": "category"})
    df["is_code"] = df["score_code_spillover"].astype(float)
    df["well_formed"] = df["score_prose_form"].astype(float) if "score_prose_form" in df else float("nan")
    df["misaligned"] = (df["score_planted_misaligned"].astype(float) if "score_planted_misaligned" in df
                        else float("nan"))
    return CellTable(samples=per_prompt(df), cells=cells)


KEYS = ["cell", "family", "kind", "variant", "arm", "seed", "alpha_value", "donor", "control_seed", "prompt",
        "group", "category"]


def per_prompt(answers: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and prompt from one row per answer (several when a cell samples each prompt more than
    once): `is_code` and `misaligned` become shares of the prompt's answers, `not_code` counts its non-code
    answers and `prose` the well-formed prose among them; `well_formed` = prose / not_code (NaN when every
    answer was code). With one answer per prompt every value is the answer's own 0/1."""
    df = answers.copy()
    df["not_code"] = 1.0 - df["is_code"]
    df["prose"] = df["not_code"] * df["well_formed"]
    df["_key"] = [json.dumps([None if pd.isna(v) else v for v in row], default=str)
                  for row in df[KEYS].itertuples(index=False, name=None)]
    agg = df.groupby("_key", sort=False).agg(
        **{k: (k, "first") for k in KEYS}, is_code=("is_code", "mean"), misaligned=("misaligned", "mean"),
        not_code=("not_code", "sum"), prose=("prose", "sum"), answers=("is_code", "size"))
    agg["well_formed"] = agg["prose"] / agg["not_code"].where(agg["not_code"] > 0)
    return agg.reset_index(drop=True)[KEYS + ["is_code", "misaligned", "well_formed", "not_code", "prose", "answers"]]


def _check_variant_directions(cells: dict[str, dict[str, Any]]) -> None:
    """Cells of one family, variant, donor and control seed must steer with the same direction file."""
    seen: dict[tuple, tuple[str, str]] = {}
    for name, c in cells.items():
        lab = c["label"]
        if lab.get("variant") in (None, "none"):
            continue
        key = (lab.get("family"), lab.get("variant"), lab.get("donor"), lab.get("control_seed"))
        dkey = _direction_key(c["provenance"])
        if dkey is None:
            continue
        if key in seen and seen[key][1] != dkey:
            raise EmsteerError(f"cells {seen[key][0]} and {name} use variant {lab.get('variant')!r} of "
                               f"{lab.get('family')} with different direction files; a report cannot mix them "
                               f"(re-run the sweep after moving the stale logs aside)")
        seen.setdefault(key, (name, dkey))
