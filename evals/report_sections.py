"""The per-family and per-pair sections of `summary.json`, from the sweep's per-prompt table and the run's artifacts.

Every rate comes from the test-split rows of `evals.report_data`; every change is paired by prompt against the
unsteered insecure model of the same seed (`evals.report_stats`). The JSON artifacts the training commands wrote
(separation per layer, calibration, ridge maps, audit) are read as files, never through training code.
`get_in` is the None-safe path lookup that every reader of a summary (claims, tables, figures) uses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evals.report_data import CellTable
from evals.report_stats import paired_change, rate_summary
from interventions.registry import variants_with
from interventions.run_layout import calibration_path, extraction_summary_path, transfer_summary_path

__all__ = ["read_json", "get_in", "family_section", "monitor_section", "transfer_section"]


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON document at `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def get_in(d: Any, *path: Any) -> Any:
    """`d[path[0]][path[1]]...`, or None as soon as a level is not a dict holding the key."""
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _units(df: pd.DataFrame, value: str = "is_code", by: str = "seed") -> list[np.ndarray]:
    return [g[value].to_numpy(float) for _, g in df.sort_values("prompt").groupby(by)]


def _general(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["group"] == "general"]


def _rates(df: pd.DataFrame, by: str = "seed") -> dict[str, dict[str, Any] | None]:
    gen, cod = _general(df), df[df["group"] == "coding"]
    prose = gen[gen["not_code"] > 0]
    planted = gen[gen["misaligned"].notna()]
    return {"spillover": rate_summary(_units(gen, by=by)), "code_on_coding": rate_summary(_units(cod, by=by)),
            "coherence": rate_summary(_units(prose, "well_formed", by=by)),
            "misaligned": rate_summary(_units(planted, "misaligned", by=by)) if len(planted) else None}


def _pairs(steered: pd.DataFrame, unsteered: pd.DataFrame, value: str, by: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per unit (seed or draw), prompt-aligned (steered, unsteered) arrays over general prompts."""
    out = []
    for unit, g in _general(steered).groupby(by):
        seed = int(g["seed"].iloc[0])
        u = _general(unsteered)
        u = u[u["seed"] == seed].set_index("prompt")[value]
        s = g.set_index("prompt")[value]
        common = sorted(set(s.index) & set(u.index))
        out.append((s.loc[common].to_numpy(float), u.loc[common].to_numpy(float)))
    return out


def _pairs_vs(model: pd.DataFrame, base: pd.DataFrame, value: str = "is_code") -> list[tuple[np.ndarray, np.ndarray]]:
    """Per seed of `model`, prompt-aligned (model, base) `value` arrays over general prompts (one base model)."""
    b = _general(base).set_index("prompt")[value]
    out = []
    for _, g in _general(model).groupby("seed"):
        s = g.set_index("prompt")[value]
        common = sorted(set(s.index) & set(b.index))
        out.append((s.loc[common].to_numpy(float), b.loc[common].to_numpy(float)))
    return out


def _coherence_change(steered: pd.DataFrame, unsteered: pd.DataFrame, by: str) -> float | None:
    """Coherence (well-formed share of non-code general answers) steered minus unsteered, in points."""
    def coh(df: pd.DataFrame) -> float:
        p = _general(df)
        n = float(p["not_code"].sum())
        return float(p["prose"].sum()) / n if n else float("nan")

    d = (coh(steered) - coh(unsteered)) * 100
    return None if math.isnan(d) else round(d, 3)


def _effect(steered: pd.DataFrame, unsteered: pd.DataFrame, by: str = "seed") -> dict[str, Any]:
    alpha = steered["alpha_value"].dropna().unique().tolist()
    out = {"alpha": alpha[0] if len(alpha) == 1 else alpha, **_rates(steered, by=by)}
    out["change"] = paired_change(_pairs(steered, unsteered, "is_code", by))
    if _general(steered)["misaligned"].notna().any():
        out["misaligned_change"] = paired_change(_pairs(steered, unsteered, "misaligned", by))
    out["coherence_change_points"] = _coherence_change(steered, unsteered, by)
    return out


def family_section(fam: str, df: pd.DataFrame, run: Path) -> dict[str, Any]:
    """One family's section: separation, calibration, rates of the unsteered models, the finetune effect, each
    variant's effect at the calibrated alpha, dose-response, audit. Only the keys with something to say are set;
    `evals.report.build_summary` lays them out in the schema's order (the rest None)."""
    fd = df[df["family"] == fam]
    base = fd[(fd["kind"] == "baseline") & (fd["arm"].isna())]
    insecure = fd[(fd["kind"] == "baseline") & (fd["arm"] == "insecure")]
    secure = fd[(fd["kind"] == "baseline") & (fd["arm"] == "secure")]
    sec: dict[str, Any] = {}
    extraction = read_json(extraction_summary_path(run, fam))
    if extraction:
        sec["separation"] = {
            "pooling": extraction.get("pooling"), "contrast": extraction.get("contrast"),
            "site": extraction.get("site"), "n_heldout": extraction.get("n_heldout"),
            "final_layer": {k: extraction.get("final_layer", {}).get(k) for k in ("layer", "accuracy", "auroc")},
            "layers": [{"layer": l["layer"], "accuracy": l["separation"]["accuracy"], "auroc": l["separation"]["auroc"],
                        "mean_residual_norm": l.get("mean_residual_norm")} for l in extraction.get("layers", [])],
        }
        sec["persona"] = extraction.get("persona")
    calib = read_json(calibration_path(run, fam))
    if calib:
        sec["calibration"] = {k: calib.get(k) for k in ("alpha", "reason", "share", "coherence_tolerance", "split",
                                                         "unsteered", "ladder")}
    models = {"base": base, "insecure": insecure, "secure": secure}
    for metric in ("spillover", "code_on_coding", "coherence", "misaligned"):
        sec[metric] = {name: (_rates(m)[metric] if len(m) else None) for name, m in models.items()}
    if len(base) and len(insecure):
        # finetune effect: the finetuned model (per seed) minus base (one model), paired by prompt
        planted = _general(base)["misaligned"].notna().any()
        sec["finetune_effect"] = {}
        for arm, m in (("insecure", insecure), ("secure", secure)):
            if len(m):
                sec["finetune_effect"][f"{arm}_minus_base"] = paired_change(_pairs_vs(m, base))
                if planted:
                    sec["finetune_effect"][f"{arm}_misaligned_minus_base"] = paired_change(
                        _pairs_vs(m, base, "misaligned"))
    variants = fd[fd["kind"] == "variant"]
    sec["variants"] = {v: _effect(g, insecure) for v, g in variants.groupby("variant")} if len(insecure) else {}
    dose = fd[fd["kind"] == "dose"]
    sec["dose"] = {v: [{**_effect(ga, insecure), "alpha": float(a)} for a, ga in g.groupby("alpha_value")]
                   for v, g in dose.groupby("variant")} if len(insecure) else {}
    audit = read_json(run / "audit" / fam / "validation.json")
    if audit:
        sec["audit"] = {k: audit.get(k) for k in ("audit_auroc_within", "audit_auroc_transferred", "n_checkpoints",
                                                   "audit_accuracy_within", "seconds_per_checkpoint")}
    return sec


def monitor_section(fam: str, table: CellTable) -> dict[str, Any] | None:
    """How well the per-answer projection (mean over generated tokens) predicts that the answer is code, on the
    unsteered insecure model's general prompts: with the own direction (within-model, pooled over seeds) and
    with each donor's transferred direction."""
    from evals.monitor import monitor_auroc, monitor_rows  # deferred: inspect_ai, ~3 s; bad input needs none

    within: list[tuple[float | None, bool]] = []
    transferred: dict[str, list[tuple[float | None, bool]]] = {}
    for c in table.cells.values():
        lab = c["label"]
        if lab.get("family") != fam or not lab.get("monitor"):
            continue
        rows = monitor_rows(c["log"])
        if lab["monitor"] == "own":
            within += rows
        else:
            transferred.setdefault(str(lab.get("donor")), []).extend(rows)
    if not within and not transferred:
        return None

    def auroc(rows: list[tuple[float | None, bool]]) -> dict[str, Any]:
        r = monitor_auroc([p for p, _ in rows], [c for _, c in rows], n_boot=1000)
        return {k: r.get(k) for k in ("auroc", "ci95", "n", "n_positive", "n_negative", "n_unscored", "reason")}

    return {"statistic": "mean projection over generated tokens", "positive": "the answer is code",
            "within": auroc(within) if within else None,
            "transferred": {d: auroc(rows) for d, rows in sorted(transferred.items())}}


def transfer_section(df: pd.DataFrame, run: Path) -> dict[str, Any]:
    """Per donor->receiver pair: the ridge map's held-out R^2 and cosines (from the transfer summary) and the
    effect of each transfer cell's variant on the receiver's insecure model."""
    out: dict[str, Any] = {}
    tr = df[df["kind"] == "transfer"]
    drawn = set(variants_with(repeated_draws=True))  # pooled over random draws, not adapter seeds
    for (donor, receiver), g in tr.groupby(["donor", "family"]):
        insecure = df[(df["family"] == receiver) & (df["kind"] == "baseline") & (df["arm"] == "insecure")]
        rec: dict[str, Any] = {"donor": donor, "receiver": receiver}
        summ = read_json(transfer_summary_path(run, donor, receiver))
        if summ:
            rec.update(r2_heldout=summ.get("r2_heldout"), cosine_with_own=summ.get("cosine_with_own"),
                       pairing=summ.get("pairing"),
                       random_mean_abs_cosine=(summ.get("transferred_random") or {}).get("mean_abs_cosine"))
        for variant, gv in g.groupby("variant"):
            rec[variant] = _effect(gv, insecure, by="control_seed" if variant in drawn else "seed")
        out[f"{donor}->{receiver}"] = rec
    return out
