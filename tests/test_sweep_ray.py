"""The Ray sweep backend: the smoke grid on a local 2-worker Ray instance gives the same logs and the same report
as the local backend, and logs from either backend are reused by the other."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from evals.grid import expand_cells, load_grid
from interventions.errors import EmsteerError

FAMILIES = ("qwen", "llama")
REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------- fast checks


def test_group_cells_by_family_and_chunks() -> None:
    from evals.sweep_ray import group_cells

    cells = expand_cells(load_grid("smoke"))
    groups = group_cells(cells)
    assert [g.name for g in groups] == ["qwen", "llama"] and all(len(g.cells) == 4 for g in groups)
    chunks = group_cells(cells, chunk_size=3)
    assert [g.name for g in chunks] == ["qwen-0", "qwen-1", "llama-0", "llama-1"]
    assert [c for g in chunks for c in g.cells] == cells  # every cell once, order kept
    with pytest.raises(EmsteerError, match="chunk size"):
        group_cells(cells, chunk_size=0)


def test_missing_ray_is_one_line_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from evals.sweep_ray import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(EmsteerError) as err:
        require_ray()
    assert "pip install" in str(err.value) and "[ray]" in str(err.value) and "\n" not in str(err.value)


def test_vllm_backend_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "training.cli", "sweep", "--run", str(tmp_path / "r"), "--grid",
                           "smoke", "--backend", "vllm"], capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("emsteer: error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "not implemented" in lines[0] and "docs/scale.md" in lines[0] and "Traceback" not in proc.stderr

# ------------------------------------------------------------------------------- local vs Ray, end to end


def _quiet(_: str) -> None:
    return None


def _build_run(run: Path) -> None:
    """The smoke grid's prerequisites on the tiny profile: insecure and secure adapters (seed 0), own directions
    and controls, for qwen and llama."""
    from training.controls import run_controls
    from training.extract import run_extract
    from training.finetune import finetune_many
    from training.organisms import build_organism
    from training.run_manifest import ensure_run

    ensure_run(run, "tiny")
    for fam in FAMILIES:
        build_organism(fam, "tiny", progress=False, log=_quiet)
    for arm in ("insecure", "secure"):
        finetune_many(run, list(FAMILIES), arm, [0], "tiny", evaluate=False, progress=False, log=_quiet)
    for fam in FAMILIES:
        run_extract(run, fam, profile="tiny", seed=0, log=_quiet)
        run_controls(run, fam, layer=-1, seeds=[0], alpha=1.0, log=_quiet)  # the smoke grid's alpha


def _log_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "logs" / "smoke").glob("*.eval"))


@pytest.fixture(scope="module")
def two_runs(emsteer_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny run copied twice; the smoke grid (8 new tokens) swept locally into one and on Ray into the other."""
    ray = pytest.importorskip("ray")
    from evals.report import write_report
    from evals.sweep import check_cells, run_cells
    from evals.sweep_groups import run_cells_pool
    from evals.sweep_ray import run_cells_ray

    root = tmp_path_factory.mktemp("sweep-ray")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _build_run(root / "base")
    timings["build"] = time.perf_counter() - t0
    grid_file = root / "grids" / "smoke.toml"  # the shipped smoke grid with fewer new tokens
    grid_file.parent.mkdir()
    grid_file.write_text(re.sub(r"max_tokens = \d+", "max_tokens = 8", (REPO / "configs/grids/smoke.toml").read_text()))
    grid = load_grid(grid_file)
    assert grid.name == "smoke" and grid.task["max_tokens"] == 8
    cells = expand_cells(grid)
    runs = {b: root / b for b in ("local", "ray", "pool")}
    for path in runs.values():
        shutil.copytree(root / "base", path)

    t0 = time.perf_counter()
    local = run_cells(cells, runs["local"], "tiny", name=grid.name, task_args=dict(grid.task),
                      alphas=check_cells(cells, runs["local"], "tiny"), display="none", log=_quiet)
    timings["local_sweep"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    in_pool = run_cells_pool(cells, runs["pool"], "tiny", name=grid.name, task_args=dict(grid.task),
                             alphas=check_cells(cells, runs["pool"], "tiny"), jobs=2, log=_quiet)
    timings["pool_sweep"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=100 * 1024 ** 2,
             log_to_driver=False)
    timings["ray_init"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        on_ray = run_cells_ray(cells, runs["ray"], "tiny", name=grid.name, task_args=dict(grid.task),
                               alphas=check_cells(cells, runs["ray"], "tiny"), display="none", log=_quiet)
        timings["ray_sweep"] = time.perf_counter() - t0
        # interchangeable logs: Ray over the local run's logs, and local over the Ray run's logs, run nothing
        before = {b: _log_names(p) for b, p in runs.items()}
        t0 = time.perf_counter()
        ray_over_local = run_cells_ray(cells, runs["local"], "tiny", name=grid.name, task_args=dict(grid.task),
                                       alphas={}, display="none", log=_quiet)
        timings["ray_rerun_over_local_logs"] = time.perf_counter() - t0
    finally:
        ray.shutdown()
    local_over_ray = run_cells(cells, runs["ray"], "tiny", name=grid.name, task_args=dict(grid.task), alphas={},
                               display="none", log=_quiet)
    local_over_pool = run_cells(cells, runs["pool"], "tiny", name=grid.name, task_args=dict(grid.task), alphas={},
                                display="none", log=_quiet)
    after = {b: _log_names(p) for b, p in runs.items()}
    summaries = {b: write_report(p, grid.name, log=_quiet) for b, p in runs.items()}
    print(f"\nsweep-ray timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    return {"runs": runs, "cells": cells, "results": {"local": local, "ray": on_ray, "pool": in_pool},
            "reruns": {"ray_over_local": ray_over_local, "local_over_ray": local_over_ray,
                       "local_over_pool": local_over_pool},
            "before": before, "after": after, "summaries": summaries, "timings": timings}


def _per_cell(run: Path) -> dict[str, Any]:
    """Per cell and prompt group: spillover (share of code answers) and coherence (share of well-formed prose),
    plus every completion by sample id."""
    from inspect_ai.log import read_eval_log

    from evals.report_data import load_cells

    table = load_cells(run, "smoke")
    numbers: dict[str, Any] = {}
    for (cell, group), sub in table.samples.groupby(["cell", "group"]):
        numbers[f"{cell}/{group}"] = {"n": len(sub), "spillover": round(float(sub["is_code"].mean()), 12),
                                      "coherence": repr(round(float(sub["well_formed"].mean()), 12)),
                                      "is_code": sub.sort_values("prompt")["is_code"].tolist()}
    completions = {name: {str(s.id): s.output.completion for s in (read_eval_log(c["log"]).samples or [])}
                   for name, c in table.cells.items()}
    return {"numbers": numbers, "completions": completions}


def _normalized(summary: dict[str, Any], run: Path) -> Any:
    """A summary without its timestamp, with the run path and log file names replaced by placeholders."""
    text = json.dumps({k: v for k, v in summary.items() if k != "created"}, sort_keys=True)
    for form in {str(run.resolve()), str(run)}:
        text = text.replace(form, "RUN")
    return json.loads(re.sub(r'[^"/]*\.eval"', '<log>"', text))


@pytest.mark.slow
def test_ray_sweep_finishes_every_cell(two_runs: dict[str, Any]) -> None:
    names = {c.name for c in two_runs["cells"]}
    for backend, result in two_runs["results"].items():
        assert result.success and set(result.logs) == names, backend
        assert all(Path(p).is_file() for p in result.logs.values()), backend
    runs = two_runs["runs"]
    for backend in ("local", "ray", "pool"):
        assert len(two_runs["before"][backend]) == len(names), backend
        listed = json.loads((runs[backend] / "logs" / "smoke" / "cells.json").read_text())
        assert [c["cell"] for c in listed["cells"]] == [c.name for c in two_runs["cells"]]
    for backend in ("ray", "pool"):
        assert not (runs[backend] / "sweep-staging").exists()  # staging folders are removed after a clean sweep
        eval_set = json.loads((runs[backend] / "logs" / "smoke" / "eval-set.json").read_text())
        assert len(eval_set["tasks"]) == len(names)  # every group's tasks, merged
        assert (runs[backend] / "logs" / "smoke" / ".eval-set-id").read_text().strip() == eval_set["eval_set_id"]


@pytest.mark.slow
def test_logs_are_interchangeable_between_backends(two_runs: dict[str, Any]) -> None:
    for name, result in two_runs["reruns"].items():
        assert result.success and len(result.logs) == len(two_runs["cells"]), name
    assert two_runs["after"] == two_runs["before"]  # neither re-run wrote a log: every cell was found finished
    assert not (two_runs["runs"]["local"] / "sweep-staging").exists()


@pytest.mark.slow
def test_ray_and_local_give_the_same_cells_and_summary(two_runs: dict[str, Any]) -> None:
    runs = two_runs["runs"]
    local, on_ray = _per_cell(runs["local"]), _per_cell(runs["ray"])
    assert len(local["numbers"]) >= len(two_runs["cells"])
    assert on_ray["numbers"] == local["numbers"]
    assert on_ray["completions"] == local["completions"]  # greedy decoding: the very same answers
    s_local, s_ray = (_normalized(two_runs["summaries"][b], runs[b]) for b in ("local", "ray"))
    assert s_local["n_cells"] == len(two_runs["cells"]) and set(s_local["families"]) == set(FAMILIES)
    assert s_ray == s_local


@pytest.mark.slow
def test_process_pool_gives_the_same_cells_and_summary(two_runs: dict[str, Any]) -> None:
    """Two single-thread worker processes (the local backend with --jobs 2) give the very same answers as one
    process: one torch thread does not change greedy decoding here."""
    runs = two_runs["runs"]
    local, pooled = _per_cell(runs["local"]), _per_cell(runs["pool"])
    assert pooled["numbers"] == local["numbers"]
    assert pooled["completions"] == local["completions"]
    assert _normalized(two_runs["summaries"]["pool"], runs["pool"]) == _normalized(two_runs["summaries"]["local"],
                                                                                   runs["local"])
