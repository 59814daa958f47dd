"""PNG figures of a report summary: separation by layer, spillover of the unsteered models, each variant's change
at the calibrated alpha, dose-response per variant, and the donor x receiver transfer heatmap per transfer variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evals.report_sections import get_in
from interventions.paths import run_keys
from interventions.registry import variants_with

__all__ = ["write_figures"]


def write_figures(summary: dict[str, Any], folder: Path) -> list[str]:
    """PNG figures: separation by layer, spillover of the models, variant changes, dose-response, transfer heatmaps."""
    import matplotlib  # deferred: ~0.5 s; `emsteer report` on a bad run exits before any figure

    matplotlib.use("Agg")  # before pyplot: no display backend on a server
    import matplotlib.pyplot as plt  # deferred: as above, and only after use("Agg")

    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    fams = summary["families"]

    def save(fig: Any, name: str) -> None:
        path = folder / name
        tmp = folder / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        tmp.replace(path)
        written.append(str(path))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for f, s in fams.items():
        layers = (s["separation"] or {}).get("layers") or []
        if layers:
            ax.plot([l["layer"] for l in layers], [l["accuracy"] for l in layers], marker="o", label=f)
    ax.set(xlabel="decoder layer", ylabel="held-out accuracy", title="Separation by layer", ylim=(0.4, 1.02))
    ax.legend()
    save(fig, "separation_by_layer.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(fams)
    for i, model in enumerate(("base", "insecure", "secure")):
        vals = [((fams[f]["spillover"] or {}).get(model) or {}).get("rate") for f in names]
        ax.bar(np.arange(len(names)) + (i - 1) * 0.27, [100 * (v or 0) for v in vals], 0.27, label=model)
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel="spillover (%)", title="Unsteered spillover (test split)")
    ax.legend()
    save(fig, "spillover_models.png")

    fig, ax = plt.subplots(figsize=(7, 3.8))
    variants = sorted({v for s in fams.values() for v in (s["variants"] or {})})
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        pts, errs = [], [[], []]
        for f in names:
            c = get_in(fams[f], "variants", v, "change") or {}
            p = c.get("change_points")
            lo, hi = (c.get("ci95") or [None, None])
            pts.append(p or 0)
            errs[0].append((p - lo) if p is not None and lo is not None else 0)
            errs[1].append((hi - p) if p is not None and hi is not None else 0)
        ax.bar(np.arange(len(names)) + (i - (len(variants) - 1) / 2) * width, pts, width, yerr=errs, capsize=2, label=v)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel="change in spillover (points)", title="Steering at the calibrated alpha (95% CI)")
    ax.legend(fontsize=7)
    save(fig, "variant_changes.png")

    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3), squeeze=False)
    for ax, f in zip(axes[0], names):
        for v, pts in (fams[f]["dose"] or {}).items():
            xs = [p["alpha"] for p in pts]
            ax.plot(xs, [p["change"]["change_points"] for p in pts], marker="o", label=v)
        ax.set(title=f, xlabel="alpha (units of R)", ylabel="change (points)")
        ax.axhline(0, color="black", lw=0.6)
        ax.legend(fontsize=7)
    save(fig, "dose_response.png")

    if summary["transfer"]:
        all_f = [f for f in run_keys() if any(f in k.split("->") for k in summary["transfer"])]
        n = len(all_f)
        transfer_variants = variants_with(transfer=True)
        fig, axes = plt.subplots(1, len(transfer_variants), figsize=(4.5 * len(transfer_variants), 3.8), squeeze=False)
        for ax, variant in zip(axes[0], transfer_variants):
            m = np.full((n, n), np.nan)
            for k, r in summary["transfer"].items():
                d, rcv = k.split("->")
                v = get_in(r, variant, "change", "change_points")
                if v is not None:
                    m[all_f.index(d), all_f.index(rcv)] = v
            im = ax.imshow(m, cmap="RdBu", vmin=-60, vmax=60)
            for i in range(n):
                for j in range(n):
                    if not np.isnan(m[i, j]):
                        ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(n), all_f, fontsize=8)
            ax.set_yticks(range(n), all_f, fontsize=8)
            ax.set(xlabel="receiver", ylabel="donor", title=f"{variant} (points)")
        fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
        save(fig, "transfer_heatmap.png")
    return written
