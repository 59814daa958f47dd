"""emsteer benchmarks: speed as ratios of two things timed side by side in one run (issue 7).

    python benchmarks/run.py [--quick] [--json FILE] [--only KEY,...] [--reproduce-times FILE]

Every ratio figure is the median of interleaved paired ratios A/B (pair order alternating A B / B A, one
untimed warm-up of each side first) with the min and max of the pairs; the absolute seconds of both sides
are kept in the JSON. `--quick` runs fewer pairs and smaller sizes (a development check in a minute or two,
not figures to quote). Needs the default-profile micro organisms (`emsteer organism build`); a missing one is
named with the command that builds it. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.timing import Result, not_measured, verdict  # noqa: E402

NO_GPU = "no GPU on this machine"


@dataclass(frozen=True)
class Case:
    """One benchmark key: what it times, and how to run it at full and at --quick size."""

    key: str
    what: str
    target: float | None
    full: Callable[[], Result]
    quick: Callable[[], Result] | None  # None: skipped by --quick


def _cases(reproduce_times: Path | None) -> list[Case]:
    """Every key, in the order they run (the slow whole-process evals last)."""
    from benchmarks import compute_cases as cc
    from benchmarks import generation_cases as gc
    from benchmarks import inspect_cases as ic
    from benchmarks import sweep_cases as sc

    return [
        Case("hook_overhead", "steer subtract / no intervention (run_batch)", 1.02,
             lambda: gc.hook_overhead(10), lambda: gc.hook_overhead(3)),
        Case("monitor_overhead", "monitor / no monitor (run_batch)", 1.02,
             lambda: gc.monitor_overhead(10), lambda: gc.monitor_overhead(3)),
        Case("extract_vs_forward", "pool_last_k, all layers / bare decoder forward", 1.10,
             lambda: cc.extract_vs_forward(10), lambda: cc.extract_vs_forward(3, n_prompts=64)),
        Case("ridge_vs_sklearn", "fit_ridge_cv, 6 alphas / sklearn RidgeCV", 0.35,
             lambda: cc.ridge_vs_sklearn(2), lambda: cc.ridge_vs_sklearn(1, n=1500, d_in=384, d_out=576)),
        Case("hook_overhead_qwen1.5b_width", "steer subtract / none, Qwen2.5-1.5B config, bf16 CPU", 1.02,
             lambda: gc.hook_overhead_real_width(1, batch=2, tokens=4), None),
        Case("gpu_hook_overhead_qwen1.5b_width", "steer subtract / none on GPU, Qwen2.5-1.5B config, bf16", 1.02,
             lambda: gc.gpu_tokens_per_s(3), lambda: gc.gpu_tokens_per_s(1, tokens=16)),
        Case("reproduce_warm_s", "`emsteer reproduce`, default profile, warm cache (seconds)", 300,
             lambda: reproduce_time("reproduce_warm_s", 300, reproduce_times),
             lambda: reproduce_time("reproduce_warm_s", 300, reproduce_times)),
        Case("reproduce_cold_s", "`emsteer reproduce`, default profile, cold cache (seconds)", 900,
             lambda: reproduce_time("reproduce_cold_s", 900, reproduce_times),
             lambda: reproduce_time("reproduce_cold_s", 900, reproduce_times)),
        Case("sweep_jobs2_vs_jobs1", "local sweep, 2 worker processes / 1 process (24 cells, whole processes)", 0.75,
             lambda: sc.sweep_pool_vs_one_process(2), lambda: sc.sweep_pool_vs_one_process(1, per_family=2,
                                                                                            max_tokens=16)),
        Case("steer_vs_hf", "inspect eval, steer/ / hf/ (default flags)", 0.6,
             lambda: ic.steer_vs_hf(1, equal=False), lambda: ic.steer_vs_hf(1, equal=False, n=32)),
        Case("steer_vs_hf_equal", "inspect eval, steer/ / hf/ (--max-connections 64 both)", 0.85,
             lambda: ic.steer_vs_hf(1, equal=True), lambda: ic.steer_vs_hf(1, equal=True, n=32)),
    ]


def reproduce_time(key: str, target: float, path: Path | None) -> Result:
    """Absolute seconds of `emsteer reproduce` read from `--reproduce-times FILE` (JSON {key: seconds, ...});
    never measured here (it is its own command) and never made up."""
    what = f"`emsteer reproduce` ({'warm' if 'warm' in key else 'cold'} cache), seconds"
    if path is None:
        return not_measured(key, what, "in this run; pass --reproduce-times FILE", target, "seconds")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get(key) is None:
        return not_measured(key, what, f"{path} has no {key}", target, "seconds")
    value = float(data[key])
    return Result(key=key, what=what, kind="seconds", target=target, value=value, status=verdict(value, target),
                  note=f"read from {path}", detail={k: v for k, v in data.items() if not k.startswith("reproduce_")})


# ------------------------------------------------------------------------------------------- machine

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """CPU model, cores, torch threads, load average, GPU, and the versions that matter."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": usable,
        "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_start": os.getloadavg(), "gpu": gpu or NO_GPU, "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("torch", "transformers", "inspect_ai", "scikit-learn", "numpy",
                                             "peft", "emsteer")},
    }


def machine_line(m: dict[str, Any]) -> str:
    """One line naming the machine, for the table's caption."""
    v = m["versions"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average_start"])
    return (f"{m['cpu']}, {m['usable_cores']} cores, torch {v['torch']} ({m['torch_threads']} threads), "
            f"transformers {v['transformers']}, inspect_ai {v['inspect_ai']}, scikit-learn {v['scikit-learn']}; "
            f"GPU: {m['gpu']}; load average at start {load}")


# ------------------------------------------------------------------------------------------- output

def _fmt_value(r: Result) -> str:
    if r.value is None:
        return "-"
    return f"{r.value:.3f}" if r.kind == "ratio" else f"{r.value:.0f} s"


def _fmt_spread(r: Result) -> str:
    if not r.spread:
        return "-"
    return f"{r.spread[0]:.3f}-{r.spread[1]:.3f}" if r.pairs > 1 else "1 pair"


def _fmt_seconds(r: Result) -> str:
    import statistics

    if not r.a_seconds:
        return "-"
    return f"{statistics.median(r.a_seconds):.3g} / {statistics.median(r.b_seconds):.3g}"


def table_rows(results: list[Result]) -> list[list[str]]:
    """[key, ratio, spread, pairs, A / B seconds, target, status] per result."""
    return [[r.key, _fmt_value(r), _fmt_spread(r), str(r.pairs or "-"), _fmt_seconds(r),
             "-" if r.target is None else (f"<= {r.target:g}" + (" s" if r.kind == "seconds" else "")), r.status]
            for r in results]


HEADER = ["key", "value (median A/B)", "min-max", "pairs", "A / B s (median)", "target", "status"]


def markdown_table(results: list[Result]) -> str:
    """The results as a markdown table (for the README)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def print_table(results: list[Result], caption: str) -> None:
    """A rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="emsteer benchmarks", caption=caption)
    for h in HEADER:
        table.add_column(h)
    for r, row in zip(results, table_rows(results)):
        style = "green" if r.status == "pass" else "red" if r.status.startswith("miss") else "dim"
        table.add_row(*row, style=style)
    Console(width=200).print(table)


# ------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer pairs, smaller sizes (development check)")
    p.add_argument("--json", type=Path, help="write the results and the machine to this JSON file")
    p.add_argument("--only", help="comma-separated keys to run (default: all)")
    p.add_argument("--reproduce-times", type=Path,
                   help="JSON with reproduce_warm_s / reproduce_cold_s measured by `emsteer reproduce` runs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cases = _cases(args.reproduce_times)
    known = [c.key for c in cases]
    if args.only:
        wanted = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = [k for k in wanted if k not in known]
        if unknown:
            print(f"unknown key(s): {', '.join(unknown)}; choose from: {', '.join(known)}", file=sys.stderr)
            return 2
        cases = [c for c in cases if c.key in wanted]
    info = machine()
    started = time.perf_counter()
    results: list[Result] = []
    for case in cases:
        run = case.quick if args.quick else case.full
        t0 = time.perf_counter()
        print(f"[{time.perf_counter() - started:6.0f}s] {case.key} ...", flush=True)
        if run is None:
            results.append(not_measured(case.key, case.what, "skipped by --quick", case.target))
            continue
        try:
            result = run()
        except Exception as err:  # noqa: BLE001 - one key failing must not lose the others
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            traceback.print_exc(file=sys.stderr)
            result = not_measured(case.key, case.what, f"failed: {first}", case.target)
        result.detail.setdefault("seconds_spent", round(time.perf_counter() - t0, 1))
        results.append(result)
        print(f"         {result.key}: {_fmt_value(result)} {_fmt_spread(result)} -> {result.status}", flush=True)
    info["load_average_end"] = os.getloadavg()
    caption = machine_line(info)
    print_table(results, caption)
    print("\n" + markdown_table(results) + "\n\nMachine: " + caption)
    if args.json:
        payload = {
            "schema": 1, "issue": 7,
            "command": "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "quick": args.quick, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - started, 1), "machine": info, "machine_line": caption,
            "method": "interleaved pairs (order alternating A B / B A) after one untimed warm-up of each side; "
                      "value = median of paired ratios A/B, spread = their min and max",
            "results": {r.key: r.to_json() for r in results},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
