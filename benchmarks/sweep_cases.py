"""Sweep benchmark: the same cells through `emsteer sweep --jobs 2` (two single-thread worker processes, one
family each) and `--jobs 1` (one process), each a whole command in a fresh process, as a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.timing import Result, ratio_result, time_pairs
from interventions.errors import EmsteerError

REPO_ROOT = Path(__file__).resolve().parents[1]

# the unsteered base model of every family on the test split: needs only the organisms, no run artifacts
GRID = """[grid]
description = "benchmark: base model of every family"
families = "all"
seeds = [0]
baselines = ["base"]
variants = []
alpha = 1.0

[task]
split = "test"
max_tokens = {max_tokens}
"""


def _sweep(run: Path, grid: Path, jobs: int):
    def go() -> int:
        shutil.rmtree(run / "logs", ignore_errors=True)  # every call runs every cell
        done = subprocess.run([sys.executable, "-m", "training.cli", "sweep", "--run", str(run), "--grid", str(grid),
                               "--jobs", str(jobs), "--display", "none", "--profile", "default"],
                              cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise EmsteerError(f"emsteer sweep --jobs {jobs} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        return len(list((run / "logs").rglob("*.eval")))
    return go


def sweep_pool_vs_one_process(pairs: int, *, max_tokens: int = 64) -> Result:
    """Whole-command wall time of a 4-cell sweep (80 prompts each) on 2 workers / in one process."""
    from training.run_manifest import ensure_run

    with tempfile.TemporaryDirectory(prefix="emsteer-bench-sweep-") as tmp:
        run = Path(tmp) / "run"
        ensure_run(run, "default")
        grid = Path(tmp) / "bench.toml"
        grid.write_text(GRID.format(max_tokens=max_tokens))

        def check(side: str, n_logs: int) -> None:
            if n_logs != 4:
                raise EmsteerError(f"side {side} wrote {n_logs} logs, expected 4")

        times = time_pairs(_sweep(run, grid, 2), _sweep(run, grid, 1), pairs, check=check)
    detail = {"cells": "base model of qwen, gemma, llama, ministral; test split (50 general + 30 coding prompts), "
                       f"greedy, {max_tokens} new tokens", "command": "emsteer sweep --run RUN --grid GRID --jobs N",
              "warmup": "one untimed run of each side"}
    return ratio_result("sweep_jobs2_vs_jobs1", "emsteer sweep --jobs 2 / --jobs 1 (4 cells)", 0.75, times,
                        detail=detail)
