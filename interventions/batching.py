"""Gather concurrent generate requests into batches and run them on a shared model in a worker thread.

Inspect calls `generate()` once per sample, concurrently. `Batcher.submit` queues the request; one worker
task per (event loop, loaded model) gathers requests until the event loop goes idle (no other task ready
to run and no new request for a few polls: every sample that will ask soon has asked) or `MAX_WAIT_S`
passed, takes the oldest request's group (same generation settings and same steering) up to
its max batch size, and runs it with `run_batch` on the model's single worker thread, so batches on one
model never overlap (the steering hooks live on shared modules). Requests that arrive meanwhile form the
next batch.

`run_batch` encodes the templated prompts with left padding (no extra special tokens), selects the
adapter, installs the steering and monitor hooks for this batch only, and decodes greedily with a KV
cache; sampling goes through `RowSampler` (per-row seeds), so outputs do not depend on the batch.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation import LogitsProcessorList, StopStringCriteria, StoppingCriteriaList

from interventions.directions import Direction
from interventions.generation import encode_batch, stop_token_ids
from interventions.hooks import Intervention, monitor, steer
from interventions.layers import unwrap_model
from interventions.model_loading import LoadedModel
from interventions.sampling import RowSampler

MAX_WAIT_S = 0.5  # longest the oldest request waits for company
IDLE_ROUNDS = 3  # consecutive idle checks (no other ready task, no new request) before a batch starts
IDLE_ROUNDTRIP_S = 0.001  # an `await asyncio.sleep(0)` slower than this means other tasks ran
IDLE_POLL_S = 0.002


@dataclass(frozen=True)
class GenSettings:
    """Generation settings shared by every row of a batch (temperature None = greedy)."""

    max_new_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_seqs: tuple[str, ...] = ()


@dataclass(eq=False)
class Steering:
    """What a batch does to the model: adapter, intervention, monitor. Batches group by identity."""

    adapter: str | None = None
    intervention: Intervention | None = None
    monitor: Direction | None = None
    monitor_layer: int | None = None
    max_batch_size: int = 128  # steer_args.DEFAULT_MAX_BATCH


@dataclass
class RowResult:
    """One finished row."""

    text: str
    output_tokens: int
    input_tokens: int
    stop_reason: str  # "stop" | "max_tokens"
    seconds: float
    batch_size: int
    monitor: dict[str, Any] | None = None


@dataclass(eq=False)
class Request:
    """A queued generate call."""

    text: str
    seed: int
    settings: GenSettings
    steering: Steering
    future: asyncio.Future = field(repr=False)

    @property
    def group(self) -> tuple[GenSettings, int]:
        return (self.settings, id(self.steering))


# ------------------------------------------------------------------------------------------- the batch

def _finish(new: list[int], stops: list[int], stop_seqs: tuple[str, ...], tokenizer) -> tuple[str, int, str]:
    """(text, output tokens, stop reason) of one row's generated ids (padding after a stop excluded)."""
    n, reason = len(new), "max_tokens"
    for i, tok in enumerate(new):
        if tok in stops:
            n, reason = i, "stop"
            break
    text = tokenizer.decode(new[:n], skip_special_tokens=True)
    out_tokens = n + (1 if reason == "stop" else 0)
    if stop_seqs:
        cut = min((text.find(s) for s in stop_seqs if s and s in text), default=-1)
        if cut >= 0:  # output tokens: up to the token that completed the stop string (padding follows it)
            k = next(k for k in range(1, n + 1)
                     if any(s and s in tokenizer.decode(new[:k], skip_special_tokens=True) for s in stop_seqs))
            text, reason, out_tokens = text[:cut], "stop", k
    return text, out_tokens, reason


def run_batch(loaded: LoadedModel, texts: list[str], seeds: list[int], settings: GenSettings,
              steering: Steering) -> list[RowResult]:
    """Generate one completion per templated text, in one left-padded batch (runs in the worker thread)."""
    started = time.perf_counter()
    with loaded.lock, ExitStack() as stack:
        tokenizer = loaded.tokenizer
        model = stack.enter_context(loaded.adapter(steering.adapter))
        base = unwrap_model(model)
        batch = encode_batch(tokenizer, texts, loaded.device)
        width = int(batch["input_ids"].shape[1])
        stops = stop_token_ids(base, tokenizer)
        kwargs: dict[str, Any] = dict(max_new_tokens=settings.max_new_tokens, do_sample=False, temperature=None,
                                      top_p=None, top_k=None, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                                      use_cache=True)
        if settings.temperature:
            kwargs["logits_processor"] = LogitsProcessorList(
                [RowSampler(seeds, settings.temperature, settings.top_p, settings.top_k)])
        if settings.stop_seqs:
            kwargs["stopping_criteria"] = StoppingCriteriaList([StopStringCriteria(tokenizer, list(settings.stop_seqs))])
        iv = steering.intervention
        if iv is not None:
            stack.enter_context(steer(model, iv, prompt_lengths=width if iv.positions == "generated" else None))
        mon = None
        if steering.monitor is not None:
            # the states that predict each generated token: last prompt position onward
            mon = stack.enter_context(monitor(model, steering.monitor.vector, steering.monitor_layer if steering.monitor_layer is not None else -1,
                                              positions="generated", prompt_lengths=width - 1))
        with torch.inference_mode():
            out = model.generate(**batch, **kwargs)
        rows = [_finish(out[r, width:].tolist(), stops, settings.stop_seqs, tokenizer) for r in range(out.shape[0])]
        summaries = mon.summary(lengths=[n for _, n, _ in rows]) if mon is not None else [None] * len(rows)
        input_tokens = batch["attention_mask"].sum(dim=1).tolist()
    seconds = time.perf_counter() - started
    return [RowResult(text=t, output_tokens=n, input_tokens=int(i), stop_reason=r, seconds=seconds,
                      batch_size=len(texts), monitor=s)
            for (t, n, r), i, s in zip(rows, input_tokens, summaries)]


# ------------------------------------------------------------------------------------------- the batcher

_EXECUTORS: dict[int, ThreadPoolExecutor] = {}
_BATCHERS: dict[tuple[int, int], "Batcher"] = {}
_REGISTRY_LOCK = threading.Lock()


def _executor(loaded: LoadedModel) -> ThreadPoolExecutor:
    with _REGISTRY_LOCK:
        ex = _EXECUTORS.get(id(loaded))
        if ex is None:
            ex = _EXECUTORS[id(loaded)] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steer-generate")
        return ex


def batcher_for(loaded: LoadedModel) -> "Batcher":
    """The batcher of `loaded` on the running event loop (one per loop: each `eval()` runs its own loop)."""
    loop = asyncio.get_running_loop()
    with _REGISTRY_LOCK:
        for key in [k for k, b in _BATCHERS.items() if b.loop.is_closed()]:
            del _BATCHERS[key]
        b = _BATCHERS.get((id(loop), id(loaded)))
        if b is None:
            b = _BATCHERS[(id(loop), id(loaded))] = Batcher(loaded, loop)
        return b


class Batcher:
    """Queue + worker task for one loaded model on one event loop (see the module docstring)."""

    def __init__(self, loaded: LoadedModel, loop: asyncio.AbstractEventLoop) -> None:
        self.loaded = loaded
        self.loop = loop
        self.pending: collections.deque[Request] = collections.deque()
        self.task: asyncio.Task | None = None
        self.batches: list[int] = []  # sizes of the batches run (diagnostics and tests)

    async def submit(self, text: str, seed: int, settings: GenSettings, steering: Steering) -> RowResult:
        """Queue one request and wait for its row."""
        req = Request(text=text, seed=seed, settings=settings, steering=steering, future=self.loop.create_future())
        self.pending.append(req)
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._work())
        return await req.future

    async def _gather(self) -> None:
        """Wait until the oldest request's group is full, the event loop has gone idle (every other task is
        waiting, so no request is about to arrive), or MAX_WAIT_S passed."""
        deadline = self.loop.time() + MAX_WAIT_S
        quiet = 0
        while True:
            head = self.pending[0]
            if sum(1 for r in self.pending if r.group == head.group) >= head.steering.max_batch_size:
                return
            if self.loop.time() >= deadline:
                return
            n, t = len(self.pending), time.perf_counter()
            await asyncio.sleep(0)  # lets every ready task run once; returns at once when none is ready
            busy = time.perf_counter() - t > IDLE_ROUNDTRIP_S or len(self.pending) != n
            quiet = 0 if busy else quiet + 1
            if quiet >= IDLE_ROUNDS:
                return
            if quiet:
                await asyncio.sleep(IDLE_POLL_S)

    def _take(self) -> list[Request]:
        head = self.pending[0]
        batch, keep = [], collections.deque()
        for r in self.pending:
            if r.future.done():
                continue  # cancelled while queued
            if r.group == head.group and len(batch) < head.steering.max_batch_size:
                batch.append(r)
            else:
                keep.append(r)
        self.pending = keep
        return batch

    async def _work(self) -> None:
        while self.pending:
            await self._gather()
            batch = self._take()
            if not batch:
                continue
            head = batch[0]
            try:
                rows = await self.loop.run_in_executor(
                    _executor(self.loaded), run_batch, self.loaded, [r.text for r in batch],
                    [r.seed for r in batch], head.settings, head.steering)
            except BaseException as err:  # noqa: BLE001 - hand every error to the waiting samples
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(err if isinstance(err, Exception) else RuntimeError(repr(err)))
                if not isinstance(err, Exception):
                    raise
                continue
            self.batches.append(len(batch))
            for r, row in zip(batch, rows):
                if not r.future.done():
                    r.future.set_result(row)
