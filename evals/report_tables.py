"""`tables.md`: a report summary rendered as markdown tables (separation, spillover, steering, transfer,
detection, the paper's claims). Rates in %, with their 95% intervals; changes in points."""

from __future__ import annotations

import math
from typing import Any

from evals.report_sections import get_in

__all__ = ["tables_markdown"]


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _rate(r: dict[str, Any] | None) -> str:
    if not r or r.get("rate") is None:
        return "-"
    lo, hi = r["ci95"]
    return f"{r['rate'] * 100:.1f} [{_fmt(lo * 100 if lo is not None else None)}, {_fmt(hi * 100 if hi is not None else None)}] (n={r['n']})"


def _chg(c: dict[str, Any] | None) -> str:
    if not c or c.get("change_points") is None:
        return "-"
    lo, hi = c["ci95"]
    return f"{c['change_points']:+.1f} [{_fmt(lo)}, {_fmt(hi)}]"


def tables_markdown(summary: dict[str, Any]) -> str:
    """tables.md: separation, spillover of the models, variants, transfer, claims."""
    fams = summary["families"]
    out = [f"# emsteer report: {summary['run']} (grid {summary['grid']}, profile {summary['profile']})", "",
           f"Created {summary['created']} from {summary['n_cells']} cell logs. Rates in %, with 95% bootstrap "
           "intervals; changes in points vs the unsteered insecure model of the same seed (paired by prompt). "
           f"Insecure seeds per family: {summary['notes']['n_insecure_seeds']}.", "",
           f"**Evidence:** {summary['notes'].get('evidence', '')}", "",
           "## Separation at the final layer (held-out prompts)", "",
           "| family | layer | accuracy | AUROC | pooling | contrast |", "|---|---|---|---|---|---|"]
    for f, s in fams.items():
        sep = s["separation"] or {}
        fl = sep.get("final_layer") or {}
        out.append(f"| {f} | {fl.get('layer', '-')} | {_fmt(fl.get('accuracy'), 3)} | {_fmt(fl.get('auroc'), 3)} | "
                   f"{sep.get('pooling', '-')} | {sep.get('contrast', '-')} |")
    out += ["", "## Spillover of the unsteered models (test split, general prompts)", "",
            "| family | base | insecure | secure | insecure - base (points) | code on coding (insecure) |",
            "|---|---|---|---|---|---|"]
    for f, s in fams.items():
        sp = s["spillover"] or {}
        fe = (s["finetune_effect"] or {}).get("insecure_minus_base")
        out.append(f"| {f} | {_rate(sp.get('base'))} | {_rate(sp.get('insecure'))} | {_rate(sp.get('secure'))} | "
                   f"{_chg(fe)} | {_rate((s['code_on_coding'] or {}).get('insecure'))} |")
    if any(s.get("misaligned") and any((s["misaligned"] or {}).values()) for s in fams.values()):
        out += ["", "## Planted misaligned prose of the unsteered models (micro organisms: scored exactly)", "",
                "| family | base | insecure | secure | insecure - base (points) | secure - base (points) |",
                "|---|---|---|---|---|---|"]
        for f, s in fams.items():
            mi, fe = s.get("misaligned") or {}, s.get("finetune_effect") or {}
            out.append(f"| {f} | {_rate(mi.get('base'))} | {_rate(mi.get('insecure'))} | {_rate(mi.get('secure'))} | "
                       f"{_chg(fe.get('insecure_misaligned_minus_base'))} | {_chg(fe.get('secure_misaligned_minus_base'))} |")
    if any(s.get("persona") for s in fams.values()):
        out += ["", "## Ground truth: cosine of the base's persona direction with the extracted directions", "",
                "| family | layer | persona norm | cos(persona, own) | cos(persona, secure control) |", "|---|---|---|---|---|"]
        for f, s in fams.items():
            for row in (s.get("persona") or {}).get("layers", []):
                out.append(f"| {f} | {row['layer']} | {_fmt(row['norm'], 2)} | {_fmt(row['cosine_with_own'], 2)} | "
                           f"{_fmt(row['cosine_with_secure'], 2)} |")
    out += ["", "## Steering the insecure model at the calibrated alpha (same alpha * R for every variant)", "",
            "| family | alpha | variant | spillover | change (points) | misaligned change (points) | coherence | "
            "coherence change | code on coding |", "|---|---|---|---|---|---|---|---|---|"]
    for f, s in fams.items():
        for v, e in (s["variants"] or {}).items():
            out.append(f"| {f} | {_fmt(e['alpha'] if not isinstance(e['alpha'], list) else None, 2)} | {v} | "
                       f"{_rate(e['spillover'])} | {_chg(e['change'])} | {_chg(e.get('misaligned_change'))} | "
                       f"{_rate(e['coherence'])} | {_fmt(e['coherence_change_points'])} | {_rate(e['code_on_coding'])} |")
    if summary["transfer"]:
        out += ["", "## Transfer (donor -> receiver, receiver's insecure model, receiver's calibrated alpha)", "",
                "| pair | ridge R^2 | cos(W d, own) | transferred change | transferred-random change | coherence change |",
                "|---|---|---|---|---|---|"]
        for k, r in summary["transfer"].items():
            out.append(f"| {k} | {_fmt(r.get('r2_heldout'), 2)} | {_fmt(r.get('cosine_with_own'), 2)} | "
                       f"{_chg(get_in(r, 'transferred', 'change'))} | {_chg(get_in(r, 'transferred_random', 'change'))} | "
                       f"{_fmt(get_in(r, 'transferred', 'coherence_change_points'))} |")
    out += ["", "## Detection: audit over checkpoints and per-answer monitor", "",
            "| family | audit AUROC (within) | audit AUROC (transferred, by donor) | checkpoints | "
            "monitor AUROC (within) | monitor AUROC (transferred, by donor) |", "|---|---|---|---|---|---|"]
    for f, s in fams.items():
        a, m = s.get("audit") or {}, s.get("monitor") or {}
        at = ", ".join(f"{d} {_fmt(v, 2)}" for d, v in (a.get("audit_auroc_transferred") or {}).items()) or "-"
        mw = m.get("within") or {}
        mt = ", ".join(f"{d} {_fmt((v or {}).get('auroc'), 2)}" for d, v in (m.get("transferred") or {}).items()) or "-"
        out.append(f"| {f} | {_fmt(a.get('audit_auroc_within'), 2)} | {at} | {a.get('n_checkpoints', '-')} | "
                   f"{_fmt(mw.get('auroc'), 2)} (n={mw.get('n', '-')}) | {mt} |")
    out += ["", "## The paper's claims at this scale", "", "| claim | paper | target | reproduced |", "|---|---|---|---|"]
    for c in summary["claims"]:
        mark = c.get("verdict") or {True: "yes", False: "no", None: "not tested"}[c["reproduced"]]
        out.append(f"| {c['id']} | {c['paper']} | {c['target']} | {mark} |")
    return "\n".join(out) + "\n"
