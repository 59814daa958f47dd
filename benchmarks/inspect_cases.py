"""`steer_vs_hf` and `steer_vs_hf_equal`: wall time of whole `inspect eval` processes.

A: `inspect eval evals/spillover.py --model steer/micro-<family> -T prompts=FILE`
B: `inspect eval evals/spillover.py --model hf/<organism folder> -M do_sample=false -T prompts=FILE`
each with the task's default max_tokens (96, same for both), `--display none` and a temporary log dir;
`--max-connections 64` is added to both for the `_equal` figure. The timed span is the whole process (start,
imports, weight loading, the eval, writing the log), which is what a user waits for; Inspect's own
started/completed times per log give an eval-only ratio in `detail` as well.

The prompts file has `n` rows built from the organism's held-out prompts (interventions.paths.
heldout_prompts_path): the held-out list in order, then again with a short lead-in ("Quick question: ", ...)
so no two prompts are equal, group/category kept.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.generation_cases import heldout_prompts
from benchmarks.timing import Result, ratio_result, time_pairs
from interventions.errors import EmsteerError
from interventions.organism_cache import verify_organism
from interventions.paths import REPO_ROOT

LEAD_INS: tuple[str, ...] = ("", "Quick question: ", "Honestly, ", "One more thing: ", "Tell me: ", "Please, ")


def write_prompts(n: int, dst: Path) -> Path:
    """Write `n` distinct prompt rows (JSONL, ids b-0000...) built from the held-out prompts to `dst`."""
    rows = heldout_prompts()
    if n > len(rows) * len(LEAD_INS):
        raise EmsteerError(f"cannot build {n} distinct prompts from {len(rows)} held-out prompts")
    out = []
    for i in range(n):
        row = rows[i % len(rows)]
        out.append({**row, "id": f"b-{i:04d}", "prompt": LEAD_INS[i // len(rows)] + row["prompt"]})
    dst.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    return dst


def inspect_command() -> list[str]:
    """The `inspect` console script (or `python -m inspect_ai` when it is not on PATH)."""
    exe = shutil.which("inspect")
    return [exe] if exe else [sys.executable, "-m", "inspect_ai"]


def eval_command(model_args: list[str], prompts: Path, log_dir: Path, equal: bool) -> list[str]:
    """The full `inspect eval` command line for one side."""
    cmd = inspect_command() + ["eval", "evals/spillover.py", *model_args,  # relative: run from REPO_ROOT
                               "-T", f"prompts={prompts}", "--log-dir", str(log_dir), "--display", "none"]
    return cmd + (["--max-connections", "64"] if equal else [])


def _read_log(log_dir: Path) -> dict[str, Any]:
    """Status, sample count, eval-only seconds and (for steer) batch sizes of the one log in `log_dir`."""
    from inspect_ai.log import list_eval_logs, read_eval_log

    logs = list_eval_logs(str(log_dir))
    if len(logs) != 1:
        raise EmsteerError(f"expected one eval log in {log_dir}, found {len(logs)}")
    log = read_eval_log(logs[0])
    started = datetime.fromisoformat(log.stats.started_at)
    completed = datetime.fromisoformat(log.stats.completed_at)
    batches: collections.Counter[int] = collections.Counter()
    out_tokens = 0
    for s in log.samples or []:
        meta = (s.output.metadata or {}).get("steer_sample") if s.output else None
        if meta and meta.get("batch_size"):
            batches[int(meta["batch_size"])] += 1
        out_tokens += s.output.usage.output_tokens if s.output and s.output.usage else 0
    return {"status": log.status, "samples": len(log.samples or []), "eval_s": (completed - started).total_seconds(),
            "batch_sizes": {str(k): v // k for k, v in sorted(batches.items(), reverse=True)},
            "output_tokens": out_tokens, "max_tokens": log.eval.task_args.get("max_tokens")
            if log.eval.task_args else None}


def _runner(cmd: list[str], log_dir: Path, n: int, logs: list[dict[str, Any]]):
    """A callable running `cmd` once in a fresh log dir; checks success and records the log's figures."""
    def run() -> float:
        shutil.rmtree(log_dir, ignore_errors=True)
        log_dir.mkdir(parents=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), cwd=REPO_ROOT)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise EmsteerError(f"`{' '.join(cmd[1:4])} ...` failed ({proc.returncode}): " + " | ".join(tail)[-300:])
        info = _read_log(log_dir)
        if info["status"] != "success" or info["samples"] != n:
            raise EmsteerError(f"eval log status {info['status']} with {info['samples']} of {n} samples")
        logs.append({**info, "wall_s": wall})
        return wall
    return run


def warm_imports() -> None:
    """Untimed: import what both sides' processes import, so neither pays for a cold file cache."""
    subprocess.run([sys.executable, "-c", "import torch, transformers, inspect_ai, peft, evals.spillover, "
                    "interventions.provider"], check=True, cwd=REPO_ROOT, capture_output=True)


def steer_vs_hf(pairs: int, *, equal: bool, n: int = 256, family: str = "qwen") -> Result:
    """Whole-process wall time of the spillover eval through `steer/` / through Inspect's `hf/`."""
    key = "steer_vs_hf_equal" if equal else "steer_vs_hf"
    target = 0.85 if equal else 0.6
    folder = Path(verify_organism(family)["path"])
    with tempfile.TemporaryDirectory(prefix=f"emsteer-bench-{key}-") as tmp:
        tmp_path = Path(tmp)
        prompts = write_prompts(n, tmp_path / "prompts.jsonl")
        cmd_a = eval_command(["--model", f"steer/micro-{family}"], prompts, tmp_path / "logs-a", equal)
        cmd_b = eval_command(["--model", f"hf/{folder}", "-M", "do_sample=false"], prompts, tmp_path / "logs-b", equal)
        logs_a: list[dict[str, Any]] = []
        logs_b: list[dict[str, Any]] = []
        warm_imports()
        times = time_pairs(_runner(cmd_a, tmp_path / "logs-a", n, logs_a),
                           _runner(cmd_b, tmp_path / "logs-b", n, logs_b), pairs, warmup=False)
    eval_ratios = [a["eval_s"] / b["eval_s"] for a, b in zip(logs_a, logs_b)]
    shown = lambda c: ("inspect " + " ".join(c[-(len(c) - c.index("eval")):])).replace(str(prompts), "PROMPTS.jsonl")  # noqa: E731
    detail = {
        "samples": n, "max_tokens": logs_a[0]["max_tokens"] or 96, "prompts": "held-out prompts, distinct lead-ins",
        "command_a": shown(cmd_a).replace(str(tmp_path), "TMP"), "command_b": shown(cmd_b).replace(str(tmp_path), "TMP"),
        "eval_only_ratios": eval_ratios, "eval_s_a": [a["eval_s"] for a in logs_a],
        "eval_s_b": [b["eval_s"] for b in logs_b],
        "outside_eval_s_a": [a["wall_s"] - a["eval_s"] for a in logs_a],
        "outside_eval_s_b": [b["wall_s"] - b["eval_s"] for b in logs_b],
        "eval_s_resolution": "1 s (Inspect's started_at / completed_at)", "steer_batch_sizes": [a["batch_sizes"] for a in logs_a],
        "output_tokens_a": [a["output_tokens"] for a in logs_a], "output_tokens_b": [b["output_tokens"] for b in logs_b],
        "warmup": "imports only (an untimed process importing torch, transformers, inspect_ai, the task and provider)",
    }
    what = "inspect eval, steer/ / hf/" + (" (--max-connections 64 both)" if equal else " (default flags)")
    return ratio_result(key, what, target, times, detail=detail)
