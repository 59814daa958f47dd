"""Single-thread worker processes for CPU work that is Python-bound (the micro organisms' training steps and
generation loops): on a small CPU, N processes with one torch thread each beat one process with N threads."""

from __future__ import annotations

import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

from interventions.errors import EmsteerError

__all__ = ["default_jobs", "output_to", "worker_pool", "run_in_workers", "torch_threads", "stderr_line",
           "CPU_TRAINING_THREADS"]

CPU_TRAINING_THREADS = 1  # see `torch_threads`

T = TypeVar("T")


def stderr_line(message: str) -> None:
    """A worker's log line: straight to stderr (workers have no progress display of their own)."""
    print(message, file=sys.stderr, flush=True)


def default_jobs() -> int:
    """Worker processes for CPU work: one per core this process may use, at most 8 (each a torch thread, ~1 GiB)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _one_thread_worker() -> None:
    """Pool initializer: one torch (and BLAS) thread per worker, so `jobs` workers use `jobs` cores."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch  # deferred: only after OMP_NUM_THREADS is set; and torch (~1 s) stays out of this light module

    torch.set_num_threads(1)


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """`jobs` fresh (spawned, not forked: torch and the event loop do not survive a fork) single-thread workers."""
    if jobs < 1:
        raise EmsteerError(f"--jobs must be at least 1, got {jobs}")
    return ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_one_thread_worker)


@contextmanager
def output_to(path: str | os.PathLike[str]) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so library and C-level output too) to the end
    of `path` inside the block, then restore them."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _call_logged(fn: Callable[..., T], log_file: str, args: tuple) -> T:
    """Worker body with its output in `log_file`; a bad-input error names the log."""
    try:
        with output_to(log_file):
            return fn(*args)
    except EmsteerError as err:
        raise EmsteerError(f"{err} (worker log: {log_file})") from None


def run_in_workers(fn: Callable[..., T], calls: Sequence[tuple], jobs: int,
                   on_done: Callable[[int, T], None] | None = None,
                   on_error: Callable[[int, Exception], T] | None = None,
                   log_files: Sequence[str | os.PathLike[str]] | None = None) -> list[T]:
    """`[fn(*args) for args in calls]`, on `min(jobs, len(calls))` single-thread workers when `jobs` > 1 (else in
    this process). `fn` must be importable by name (a module-level function). A call that raises goes to
    `on_error(i, err)`, whose return value stands in for its result (it may re-raise); without `on_error` the first
    failure cancels what has not started and is raised. `on_done(i, result)` is called as each call finishes.
    `log_files[i]`: where call i's worker output goes (appended; several workers never interleave on the
    terminal); without it, workers share this process's terminal."""
    if log_files is not None and len(log_files) != len(calls):
        raise ValueError("log_files must name one file per call")
    results: dict[int, T] = {}

    def finish(i: int, get: Callable[[], T]) -> None:
        try:
            results[i] = get()
        except Exception as err:  # noqa: BLE001 - the caller decides (on_error) or it propagates
            if on_error is None:
                raise
            results[i] = on_error(i, err)
        if on_done is not None:
            on_done(i, results[i])

    if jobs <= 1 or len(calls) <= 1:
        for i, args in enumerate(calls):
            finish(i, lambda args=args: fn(*args))
        return [results[i] for i in range(len(calls))]
    with worker_pool(min(jobs, len(calls))) as pool:
        if log_files is not None:
            pending = {pool.submit(_call_logged, fn, os.fspath(log_files[i]), args): i for i, args in enumerate(calls)}
        else:
            pending = {pool.submit(fn, *args): i for i, args in enumerate(calls)}
        try:
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    finish(pending.pop(fut), fut.result)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return [results[i] for i in range(len(calls))]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch threads (None: leave as is), then restore the previous count.

    CPU LoRA training uses one thread on purpose: a float sum's rounding depends on how many threads split it, so
    a fixed count makes an adapter the same bits on every machine and whichever path built it (`emsteer
    finetune`, or a worker of `emsteer reproduce`); parallelism comes from training several at once."""
    import torch  # deferred: torch, ~1 s; at module level it would load before a worker sets OMP_NUM_THREADS

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
