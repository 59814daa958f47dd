"""Many micro finetunes at once: each adapter trains in its own single-thread worker process.

Why: a micro organism's training step is too small for two torch threads to help much (measured on the 2-core
machine: one adapter with 2 threads 55 s; two adapters side by side with one thread each 78 s, i.e. 39 s apiece).
Every adapter is validated in this process first (data, family, run manifest), so bad input stops before any
worker starts. Each worker calls `training.finetune.finetune`, so the artifacts, the re-run-is-a-no-op rule and
the atomic writes are exactly those of `emsteer finetune`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from interventions.run_layout import adapter_dir, worker_log_path
from interventions.workers import run_in_workers, stderr_line
from training.finetune import _plan, finetune, inputs_key, read_metadata
from training.finetune_data import resolve_data

__all__ = ["FinetuneJob", "finetune_jobs"]

Log = Callable[[str], None]
FinetuneJob = tuple[str, str, int]  # (family, data, seed)


def _train_one(run: str, family: str, data: str, seed: int, profile: str) -> str:
    """Worker body: one adapter, no progress bars (several workers share the terminal), lines to stderr."""
    return str(finetune(Path(run), family, data, seed, profile, evaluate=False, progress=False, log=stderr_line))


def finetune_jobs(run: Path, jobs_list: Sequence[FinetuneJob], profile: str, *, jobs: int, progress: bool = True,
                  log: Log = print) -> list[Path]:
    """Train every (family, data, seed) of `jobs_list`; `jobs` > 1 runs them on that many single-thread worker
    processes. Returns the adapter folders in the order of `jobs_list`."""
    run = Path(run)
    all_jobs = list(jobs_list)
    plans = {}
    for data in sorted({d for _, d, _ in jobs_list}):  # every input validated before any training starts
        chat = resolve_data(data, profile, log=lambda m: None)
        for family in sorted({f for f, d, _ in jobs_list if d == data}):
            plans[family, data] = _plan(run, family, chat, profile, None, None, lambda m: None)

    def up_to_date(family: str, data: str, seed: int) -> bool:
        plan = plans[family, data]
        meta = read_metadata(adapter_dir(run, family, plan.data.name, seed))
        return meta is not None and meta.get("inputs_sha256") == inputs_key(plan.settings, plan.data, plan.base, seed,
                                                                              plan.mode)

    todo = [job for job in jobs_list if not up_to_date(*job)]
    if len(todo) < len(jobs_list):
        log(f"{len(jobs_list) - len(todo)} of {len(jobs_list)} adapters are up to date")
    if jobs <= 1 or len(todo) <= 1:
        return [finetune(run, f, d, s, profile, evaluate=False, progress=progress, log=log) for f, d, s in jobs_list]
    bar = None
    if progress:
        bar = tqdm(total=len(todo), desc=f"finetune ({min(jobs, len(todo))} workers)", unit="adapter")
    try:
        log(f"finetune: {len(todo)} adapters on {min(jobs, len(todo))} workers (output of each: "
            f"{worker_log_path(run, 'x').parent}/finetune-<family>-<arm>-seed_<s>.log)")
        run_in_workers(_train_one, [(str(run.resolve()), f, d, int(s), profile) for f, d, s in todo], jobs,
                       on_done=(lambda i, _: bar.update(1)) if bar is not None else None,
                       log_files=[worker_log_path(run, f"finetune-{f}-{plans[f, d].data.name}-seed_{s}")
                                  for f, d, s in todo])
    finally:
        if bar is not None:
            bar.close()
    return [adapter_dir(run, f, plans[f, d].data.name, s) for f, d, s in all_jobs]
