"""Sweep benchmark: the same cells through the local backend with 2 single-thread worker processes (one family
each) and in one process (`emsteer sweep --jobs 2` / `--jobs 1`), each a whole fresh process, as a user runs it:
imports, worker start-up and model loads included.

    python -m benchmarks.sweep_cases RUN JOBS CELLS_PER_FAMILY MAX_TOKENS   (one side; used by the benchmark)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.timing import Result, ratio_result, time_pairs
from interventions.errors import EmsteerError
from interventions.paths import FAMILIES

REPO_ROOT = Path(__file__).resolve().parents[1]


def bench_cells(per_family: int) -> list:
    """`per_family` cells of each family's unsteered base model (they need only the organisms); the cells differ
    in their `seed` key, which only seeds sampling, so each is its own Inspect task with the same greedy work."""
    from evals.grid import Cell

    return [Cell(name=f"{f}.bench.none.base.s{s}", family=f, kind="baseline", arm=None, seed=s, variant="none",
                 alpha=None, op="subtract", layer=-1) for f in FAMILIES for s in range(per_family)]


def run_side(run: Path, jobs: int, per_family: int, max_tokens: int) -> int:
    """One side: sweep the benchmark cells into a fresh `RUN/logs/bench`; returns the number of logs written."""
    from evals.sweep_backends import SweepBackend

    shutil.rmtree(run / "logs", ignore_errors=True)
    result = SweepBackend(run, "default", jobs=jobs, display="none", log=lambda m: None)(
        bench_cells(per_family), name="bench", task_args={"split": "test", "max_tokens": max_tokens}, alphas={})
    if not result.success:
        raise EmsteerError(f"the benchmark sweep with jobs={jobs} did not finish every cell")
    return len(list((run / "logs").rglob("*.eval")))


def _side(run: Path, jobs: int, per_family: int, max_tokens: int):
    def go() -> int:
        done = subprocess.run([sys.executable, "-m", "benchmarks.sweep_cases", str(run), str(jobs), str(per_family),
                               str(max_tokens)], cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise EmsteerError(f"sweep side jobs={jobs} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        return int(done.stdout.strip().splitlines()[-1])
    return go


def sweep_pool_vs_one_process(pairs: int, *, per_family: int = 6, max_tokens: int = 64) -> Result:
    """Whole-process wall time of a 4-family sweep (`per_family` cells each, 80 prompts per cell) on 2 workers /
    in one process."""
    from training.run_manifest import ensure_run

    n = per_family * len(FAMILIES)
    with tempfile.TemporaryDirectory(prefix="emsteer-bench-sweep-") as tmp:
        run = Path(tmp) / "run"
        ensure_run(run, "default")

        def check(side: str, n_logs: int) -> None:
            if n_logs != n:
                raise EmsteerError(f"side {side} wrote {n_logs} logs, expected {n}")

        times = time_pairs(_side(run, 2, per_family, max_tokens), _side(run, 1, per_family, max_tokens), pairs,
                           warmup=False, check=check)
    detail = {"cells": f"{n}: {per_family} per family of the unsteered base model (qwen, gemma, llama, ministral), "
                       f"test split (50 general + 30 coding prompts), greedy, {max_tokens} new tokens",
              "sides": "a fresh `python -m benchmarks.sweep_cases RUN JOBS ...` process each (SweepBackend, as "
                       "`emsteer sweep --jobs N` uses it)", "warmup": "none; the pairs alternate their order"}
    return ratio_result("sweep_jobs2_vs_jobs1", f"local sweep, 2 worker processes / 1 process ({n} cells)", 0.75,
                        times, detail=detail)


if __name__ == "__main__":
    print(run_side(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
