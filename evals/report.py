"""`emsteer report RUN`: the study's numbers from a run's sweep logs and artifacts.

Writes `RUN/report/summary.json` (schema `emsteer.report/1`, documented in the README and checked by
`check_summary`), `RUN/report/tables.md` and PNG figures under `RUN/report/figures/`. Every rate comes from
the sweep's test-split logs; every change is paired by prompt against the unsteered insecure model of the
same seed, with a 95% bootstrap interval over prompts (and seeds, or random draws, where there are several).
The artifacts it reads (separation per layer, calibration, ridge maps, audit) are JSON files the training
commands wrote; the report never imports training code.

This module is the entry and the schema; the work is split by concern: `report_data` (logs -> per-prompt
table), `report_stats` (bootstrap), `report_sections` (family and transfer sections), `report_claims` (the
paper's claims), `report_tables` (tables.md) and `report_figures` (PNGs).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Callable

from evals.report_claims import paper_claims
from evals.report_data import CellTable, load_cells
from evals.report_figures import write_figures
from evals.report_sections import family_section, monitor_section, read_json, transfer_section
from evals.report_tables import tables_markdown
from interventions.atomic import write_json_atomic, write_text_atomic
from interventions.errors import EmsteerError
from interventions.paths import SMOKE_VERDICT, is_pretrained_profile, is_smoke_profile, run_keys
from interventions.run_layout import report_dir, run_manifest_path

__all__ = ["build_summary", "write_report", "check_summary", "SCHEMA", "SUMMARY_KEYS", "FAMILY_KEYS"]

SCHEMA = "emsteer.report/1"
SUMMARY_KEYS = ("schema", "run", "profile", "grid", "created", "n_cells", "families", "transfer", "claims", "notes",
                "cells")
FAMILY_KEYS = ("separation", "calibration", "spillover", "code_on_coding", "coherence", "misaligned", "persona", "variants", "dose",
               "finetune_effect", "audit", "monitor")


def build_summary(run: str | Path, grid: str = "paper") -> tuple[dict[str, Any], CellTable]:
    """The summary dict of a run's sweep and artifacts (not yet written)."""
    run = Path(run)
    manifest = read_json(run_manifest_path(run))
    if manifest is None:
        raise EmsteerError(f"{run} is not a run directory (no readable {run_manifest_path(run)})")
    table = load_cells(run, grid)
    df = table.samples
    families = [f for f in run_keys() if f in set(df["family"])]
    fams = {f: {k: None for k in FAMILY_KEYS} | family_section(f, df, run) for f in families}  # schema order
    for f in families:
        fams[f]["monitor"] = monitor_section(f, table)
    transfer = transfer_section(df, run)
    n_seeds = {f: int(df[(df["family"] == f) & (df["arm"] == "insecure")]["seed"].nunique()) for f in families}
    smoke = is_smoke_profile(manifest.get("profile"))
    claims = paper_claims(fams, transfer)
    if smoke:  # a smoke run judges nothing: its organisms cannot show the phenomenon, whatever the numbers say
        claims = [{**c, "reproduced": None, "verdict": SMOKE_VERDICT} for c in claims]
    summary = {
        "schema": SCHEMA, "run": str(run), "profile": manifest.get("profile"), "grid": grid,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "n_cells": len(table.cells),
        "families": fams, "transfer": transfer, "claims": claims,
        "cells": {name: {"log": c["log"], "direction_sha256": c["provenance"]["direction_sha256"],
                         "alpha": c["label"].get("alpha_value")} for name, c in sorted(table.cells.items())},
        "notes": {"split": "test half of the held-out prompts (alpha was calibrated on the other half)",
                  "change": "steered minus unsteered insecure model of the same seed, paired by prompt, in points; "
                            "95% bootstrap over prompts and over seeds (or random draws) where there are several",
                  "coherence": "share of non-code answers to general prompts that are well-formed prose "
                               "(evals/coherence.py)",
                  "n_insecure_seeds": n_seeds,
                  "evidence": (f"{SMOKE_VERDICT}: profile {manifest.get('profile')} organisms are too small to show "
                               "the phenomenon; the numbers check the pipeline and no claim is judged") if smoke
                              else ("one run of the documented profile; a claim holds only if it holds on a second "
                                    "finetune seed" + (" (see n_insecure_seeds)" if min(n_seeds.values(), default=0) < 2
                                                       else "")) if is_pretrained_profile(manifest.get("profile"))
                              else "one run of the documented profile; a claim holds only if it holds on a second "
                                   "organism seed"},
    }
    check_summary(summary)
    return summary, table


def check_summary(summary: dict[str, Any]) -> None:
    """Raise when a summary does not follow schema `emsteer.report/1` (the README documents it)."""
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing or summary.get("schema") != SCHEMA:
        raise EmsteerError(f"summary.json does not follow {SCHEMA}: missing {missing or 'schema tag'}")
    for fam, sec in summary["families"].items():
        gone = [k for k in FAMILY_KEYS if k not in sec]
        if gone:
            raise EmsteerError(f"summary.json family {fam} lacks {', '.join(gone)}")
        for v, eff in (sec["variants"] or {}).items():
            if not {"alpha", "spillover", "change", "coherence", "code_on_coding", "coherence_change_points"} <= set(eff):
                raise EmsteerError(f"summary.json {fam}/{v} lacks effect keys")
            if not {"change_points", "ci95", "n_prompts", "n_units"} <= set(eff["change"]):
                raise EmsteerError(f"summary.json {fam}/{v} change lacks keys")
    for c in summary["claims"]:
        if not {"id", "paper", "target", "measured", "reproduced"} <= set(c):
            raise EmsteerError(f"summary.json claim {c.get('id')} lacks keys")


def write_report(run: str | Path, grid: str = "paper", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build and write summary.json, tables.md and figures; return the summary."""
    summary, _ = build_summary(run, grid)
    out = report_dir(run)
    figures = write_figures(summary, out / "figures")
    summary["figures"] = [str(Path(f).relative_to(out)) for f in figures]
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "tables.md", tables_markdown(summary))
    log(f"report: {out / 'summary.json'}, {out / 'tables.md'}, {len(figures)} figures")
    return summary
