"""Grids, calibration choice, bootstrap statistics, and `reproduce` end to end on the tiny profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evals.calibrate import choose_alpha
from evals.grid import expand_cells, load_grid, parse_grid
from evals.report_stats import bootstrap_mean, paired_change, rate_summary
from interventions.errors import EmsteerError

# ------------------------------------------------------------------------------------------------ grids


def test_paper_grid_has_every_cell_of_the_study() -> None:
    g = load_grid("paper")
    cells = expand_cells(g)
    names = [c.name for c in cells]
    assert len(names) == len(set(names))
    kinds = {k: sum(c.kind == k for c in cells) for k in ("baseline", "variant", "dose", "transfer")}
    # 4 families: base + 3 seeds x (insecure, secure) = 7 baselines; 3 seeds x 5 variants; 2 variants x 4 alphas
    kinds["monitor"] = sum(c.kind == "monitor" for c in cells)
    assert kinds == {"baseline": 28, "variant": 60, "dose": 32, "transfer": 12 * (1 + 2), "monitor": 12}
    assert sum(c.monitor == "own" for c in cells) == 4 * 3  # the unsteered insecure cells record projections
    pairs = {(c.donor, c.family) for c in cells if c.kind == "transfer"}
    assert len(pairs) == 12 and all(d != r for d, r in pairs)
    assert {c.variant for c in cells if c.kind == "variant"} == {"own", "secure_control", "random", "orthogonal",
                                                                   "wrong_layer"}
    # every variant of a family shares the calibrated alpha (matched magnitude)
    assert {c.alpha for c in cells if c.kind in ("variant", "transfer")} == {"calibrated"}


def test_family_filter_and_smoke_grid() -> None:
    smoke = expand_cells(load_grid("smoke"))
    assert len(smoke) == 8 and {c.family for c in smoke} == {"qwen", "llama"}
    only_llama = expand_cells(load_grid("paper"), ("llama",))
    assert {c.family for c in only_llama} == {"llama"}
    assert sum(c.kind == "transfer" for c in only_llama) == 3 * 3  # 3 donors x (transferred + 2 random draws)


@pytest.mark.parametrize("data, message", [
    ({"grid": {"families": ["qwen"]}, "sweep": {}}, "unknown section [sweep]"),
    ({"grid": {"families": ["qwen"], "alphas": [1]}}, "unknown key 'alphas' in [grid]"),
    ({"grid": {"families": ["qwen", "mistral"]}}, "unknown family 'mistral'"),
    ({"grid": {"families": ["qwen"], "variants": ["own", "antiown"]}}, "unknown name 'antiown'"),
    ({"grid": {"families": ["qwen"], "alpha": -1}}, "alpha must be a positive number"),
    ({"grid": {"families": ["qwen"], "seeds": []}}, "seeds must be a non-empty list"),
    ({"grid": {"families": ["qwen"]}, "transfer": {"pairs": ["qwen->qwen"]}}, "is not 'donor->receiver'"),
    ({"grid": {"families": ["qwen"]}, "dose": {"variants": ["own"]}}, "[dose] needs both variants and alphas"),
    ({"dose": {"variants": ["own"], "alphas": [1]}}, "missing the [grid] section"),
    ({"grid": {"families": ["qwen"]}, "task": {"split": "train"}}, "split must be one of"),
])
def test_bad_grids_fail_with_one_line(data: dict, message: str) -> None:
    with pytest.raises(EmsteerError) as err:
        parse_grid(data, name="bad")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_grid_name_lists_the_shipped_ones() -> None:
    with pytest.raises(EmsteerError, match="not found; give a .toml path or one of: .*paper.*smoke"):
        load_grid("nope")

# ------------------------------------------------------------------------------------------ statistics


def test_paired_change_known_answers() -> None:
    steered = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0], float)
    unsteered = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], float)
    c = paired_change([(steered, unsteered)])
    assert c["change_points"] == pytest.approx(-40.0) and c["n_prompts"] == 10 and c["n_units"] == 1
    lo, hi = c["ci95"]
    assert lo < -40 < hi and hi <= 0 and lo >= -80
    # a constant shift has a zero-width interval
    same = paired_change([(np.ones(8), np.zeros(8)), (np.ones(5), np.zeros(5))])
    assert same["change_points"] == 100 and same["ci95"] == [100, 100] and same["n_units"] == 2


def test_bootstrap_over_units_widens_with_between_seed_spread() -> None:
    rng = np.random.default_rng(0)
    a = [rng.binomial(1, 0.5, 60).astype(float) for _ in range(3)]
    b = [rng.binomial(1, p, 60).astype(float) for p in (0.1, 0.5, 0.9)]
    _, lo_a, hi_a = bootstrap_mean(a)
    _, lo_b, hi_b = bootstrap_mean(b)
    assert (hi_b - lo_b) > 1.5 * (hi_a - lo_a)
    r = rate_summary([np.array([1.0, 0.0, 0.0, 0.0])])
    assert r["rate"] == 0.25 and r["n"] == 4 and r["n_units"] == 1


def test_choose_alpha_smallest_coherent_alpha_reaching_the_share() -> None:
    unsteered = {"spillover": 0.6, "coherence": 0.95}
    ladder = {0.25: {"spillover": 0.5, "coherence": 0.95}, 0.5: {"spillover": 0.2, "coherence": 0.93},
              1.0: {"spillover": 0.1, "coherence": 0.9}, 2.0: {"spillover": 0.0, "coherence": 0.5}}
    alpha, why = choose_alpha(unsteered, ladder, share=0.8)
    # 2.0 breaks coherence; best coherent effect 0.5 (alpha 1); 80% of it = 0.4, first reached at alpha 0.5
    assert alpha == 0.5 and "80%" in why
    assert choose_alpha(unsteered, {1.0: {"spillover": 0.7, "coherence": 0.95}})[0] == 1.0
    broken = {0.5: {"spillover": 0.0, "coherence": 0.2}, 1.0: {"spillover": 0.0, "coherence": float("nan")}}
    assert choose_alpha(unsteered, broken)[0] == 0.5

# ------------------------------------------------------------------------------------- end to end (tiny)


@pytest.fixture(scope="module")
def tiny_reproduce(tiny_organisms, tmp_path_factory):
    from training.reproduce import plan_reproduce, run_reproduce

    run = tmp_path_factory.mktemp("reproduce") / "run"
    plan = plan_reproduce(run, profile="tiny", grid="tiny", display="none")
    summary = run_reproduce(plan, log=lambda m: None, progress=False)
    return run, plan, summary


def test_reproduce_tiny_end_to_end_writes_the_documented_summary(tiny_reproduce) -> None:
    from evals.report import FAMILY_KEYS, SCHEMA, SUMMARY_KEYS, check_summary

    run, plan, summary = tiny_reproduce
    on_disk = json.loads((run / "report" / "summary.json").read_text())
    check_summary(on_disk)
    assert on_disk["schema"] == SCHEMA and set(SUMMARY_KEYS) <= set(on_disk)
    assert set(on_disk["families"]) == {"qwen", "llama"} and on_disk["n_cells"] == 24
    for fam, sec in on_disk["families"].items():
        assert set(FAMILY_KEYS) <= set(sec)
        assert set(sec["variants"]) == {"own", "secure_control", "random", "orthogonal"}
        alphas = {v["alpha"] for v in sec["variants"].values()}
        assert alphas == {json.loads((run / "calibration" / f"{fam}.json").read_text())["alpha"]}
        assert [p["alpha"] for p in sec["dose"]["own"]] == [0.5, 2.0]
        assert sec["separation"]["final_layer"]["accuracy"] is not None
        assert sec["spillover"]["base"]["n"] > 0 and sec["audit"] is not None
        assert sec["monitor"]["within"]["n"] == sec["spillover"]["insecure"]["n"]  # every answer was monitored
        assert set(sec["monitor"]["transferred"]) == ({"qwen", "llama"} - {fam})
    assert set(on_disk["transfer"]) == {"qwen->llama", "llama->qwen"}
    assert {c["id"] for c in on_disk["claims"]} >= {"separation", "own_direction", "magnitude_controls",
                                                     "secure_control", "transfer_controls"}
    # a tiny run is a smoke test: it judges no claim and says so in the summary and the tables
    assert {(c["reproduced"], c["verdict"]) for c in on_disk["claims"]} == {(None, "smoke test: not evidence")}
    assert on_disk["notes"]["evidence"].startswith("smoke test: not evidence")
    tables = (run / "report" / "tables.md").read_text()
    assert "**Evidence:** smoke test: not evidence" in tables and "| yes |" not in tables
    for name in ("tables.md", "figures/separation_by_layer.png", "figures/transfer_heatmap.png",
                 "figures/dose_response.png"):
        assert (run / "report" / name).stat().st_size > 0
    assert set(json.loads((run / "reproduce.json").read_text())["timings_s"]) >= {"finetune", "sweep", "report"}


def test_reproduce_tiny_gives_the_numbers_recorded_before_the_refactor(tiny_reproduce) -> None:
    """Issue 16's guard: every number of the tiny report equals what the code gave before the architecture
    refactor (tests/golden/tiny_reproduce_numbers.json, made by the same fixture); wall-clock figures excluded."""
    from report_numbers import differences, report_numbers

    run, _, _ = tiny_reproduce
    golden = json.loads((Path(__file__).parent / "golden" / "tiny_reproduce_numbers.json").read_text())["numbers"]
    actual = report_numbers(json.loads((run / "report" / "summary.json").read_text()))
    assert len(golden) > 800
    diff = differences(golden, actual)
    assert not diff, "\n".join(diff[:40])


def test_rerun_skips_finished_cells(tiny_reproduce) -> None:
    from training.reproduce import run_reproduce

    run, plan, _ = tiny_reproduce
    before = sorted(p.name for p in (run / "logs" / "tiny").glob("*.eval"))
    run_reproduce(plan, log=lambda m: None, progress=False)
    after = sorted(p.name for p in (run / "logs" / "tiny").glob("*.eval"))
    assert after == before and len(after) == 24


def test_sweep_logs_carry_the_intervention_in_their_header(tiny_reproduce) -> None:
    """Every cell's log header holds the resolved intervention as plain values, and its name and tags tell
    variant, op, alpha and grid apart in the log list."""
    from inspect_ai.log import read_eval_log

    run, _, _ = tiny_reproduce
    alpha = json.loads((run / "calibration" / "qwen.json").read_text())["alpha"]
    headers = [read_eval_log(str(p), header_only=True).eval for p in sorted((run / "logs" / "tiny").glob("*.eval"))]
    own = next(h for h in headers if h.metadata["cell"]["family"] == "qwen" and h.metadata["cell"]["kind"] == "variant"
               and h.metadata["cell"]["variant"] == "own")
    head = own.metadata["steer"]
    assert (head["variant"], head["op"], head["alpha"], head["layer"]) == ("own", "subtract", alpha, 1)
    assert head["alpha_source"] == "-M alpha" and len(head["direction_sha256"]) == 64
    assert head["adapter"].endswith("adapters/qwen/insecure/seed_0") and len(head["weights_sha256"]) == 64
    assert {"variant:own", f"subtract:{alpha:g}", "grid:tiny"} <= set(own.tags)
    assert f"own subtract alpha {alpha:g} at layer 1" in own.task_display_name
    base = next(h for h in headers if h.metadata["cell"]["family"] == "qwen" and h.metadata["cell"]["arm"] is None)
    assert base.metadata["steer"]["alpha"] is None and base.task_display_name.endswith("unsteered")


def test_quiet_reproduce_prints_only_the_final_table(tiny_reproduce) -> None:
    """`--quiet`: nothing on stderr; the plan and stage lines go to RUN/reproduce.log (a finished run: every stage
    is a no-op, so this takes seconds)."""
    import subprocess
    import sys

    run, _, _ = tiny_reproduce
    done = subprocess.run([sys.executable, "-m", "training.cli", "reproduce", "--profile", "tiny", "--out", str(run),
                           "--quiet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""
    assert "smoke test: not evidence" in done.stdout and "timings (s):" in done.stdout
    logged = (run / "reproduce.log").read_text()
    assert "plan: profile tiny, grid tiny" in logged and "== sweep" in logged


def test_report_refuses_logs_with_disagreeing_provenance(tiny_reproduce, tmp_path) -> None:
    import shutil

    from inspect_ai.log import read_eval_log, write_eval_log

    from evals.report_data import load_cells

    run, _, _ = tiny_reproduce
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    logs = sorted((copy / "logs" / "tiny").glob("*.eval"))
    victim = next(p for p in logs if "own" in p.name and "variant" in p.name)
    lg = read_eval_log(str(victim))
    first = next(iter(lg.eval.model_args["resolved"]["sha256"]))
    lg.eval.model_args["resolved"]["sha256"][first] = "0" * 64
    write_eval_log(lg, str(victim.with_name("2099-01-01T00-00-00-00-00_changed.eval")))
    with pytest.raises(EmsteerError, match="two logs with different provenance"):
        load_cells(copy, "tiny")


def test_reproduce_bad_input_fails_before_running(tiny_reproduce, tmp_path) -> None:
    from training.run_manifest import ensure_run

    run, _, _ = tiny_reproduce
    env = {**os.environ}
    ensure_run(tmp_path / "empty", "tiny")  # a run with no adapters yet
    cases = [
        (["reproduce", "--profile", "default", "--out", str(run)], "belongs to profile 'tiny'"),
        (["reproduce", "--profile", "tiny", "--grid", "nope", "--out", str(tmp_path / "r")], "grid 'nope' not found"),
        (["sweep", "--run", str(tmp_path / "empty"), "--grid", "smoke", "--profile", "tiny"], "missing adapter"),
        (["report", str(tmp_path / "nowhere")], "no run at"),
        (["sweep", "--run", str(tmp_path / "nowhere"), "--grid", "smoke"], "(does not exist)"),
    ]
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-m", "training.cli", *args], capture_output=True, text=True, env=env,
                              timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [l for l in proc.stderr.splitlines() if l.startswith("emsteer: error:")]
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_killed_reproduce_finishes_only_the_missing_work(tiny_organisms, tmp_path) -> None:
    """SIGKILL `emsteer reproduce` in the middle of its sweep, re-run it: every finished cell log is kept (not
    run again), the missing cells run, and no temp file or half-written artifact is left."""
    import signal
    import time

    from inspect_ai.log import list_eval_logs, read_eval_log

    from evals.report import check_summary

    run = tmp_path / "run"
    logs = run / "logs" / "tiny"
    # one process: its sweep writes each cell's log as the cell finishes, so the kill lands mid-sweep (on worker
    # processes a family's logs arrive together, and two equal families can finish within the same poll)
    cmd = [sys.executable, "-m", "training.cli", "reproduce", "--profile", "tiny", "--grid", "tiny", "--out", str(run),
           "--display", "none", "--quiet", "--jobs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    err = tmp_path / "first.err"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    t0 = time.monotonic()
    while len(list(logs.glob("*.eval"))) < 4:  # a few cells have logs: the sweep is under way
        assert proc.poll() is None, err.read_text()[-2000:]
        assert time.monotonic() - t0 < 400, "the sweep did not start in time"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    def successes() -> dict[str, str]:
        out = {}
        for info in list_eval_logs(str(logs)):
            h = read_eval_log(info, header_only=True)
            if h.status == "success":
                out[h.eval.metadata["cell"]["cell"]] = Path(h.location.removeprefix("file://")).name
        return out

    before = successes()
    assert len(before) < 24  # killed mid-sweep
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    after = successes()
    assert len(after) == 24
    assert all(after[c] == name for c, name in before.items())  # finished cells were not run again
    check_summary(json.loads((run / "report" / "summary.json").read_text()))
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp") or ".building-" in p.name or ".old-" in p.name]
    assert not leftovers, leftovers


def test_calibration_is_redone_when_its_adapter_or_directions_change(tmp_path) -> None:
    """A calibration record is current only for the adapter weights, extraction and task it was made from."""
    from evals.calibrate import calibration_inputs, calibration_is_current
    from interventions.run_layout import adapter_dir, calibration_path, extraction_summary_path

    run = tmp_path / "run"
    weights = adapter_dir(run, "qwen", "insecure", 0) / "adapter_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"first")
    extraction_summary_path(run, "qwen").parent.mkdir(parents=True)
    extraction_summary_path(run, "qwen").write_text(json.dumps({"inputs_sha256": "a"}))
    task = {"max_tokens": 64, "samples": 3, "temperature": 1.0}
    assert not calibration_is_current(run, "qwen", task=task)  # no record yet
    calibration_path(run, "qwen").parent.mkdir(parents=True)
    calibration_path(run, "qwen").write_text(json.dumps({"inputs_sha256": calibration_inputs(run, "qwen", task=task)}))
    assert calibration_is_current(run, "qwen", task=task)
    assert not calibration_is_current(run, "qwen", task={**task, "samples": 1})
    weights.write_bytes(b"retrained")
    assert not calibration_is_current(run, "qwen", task=task)


def test_only_the_tiny_profile_is_a_smoke_test() -> None:
    from interventions.paths import PROFILES, is_smoke_profile

    assert {p: is_smoke_profile(p) for p in PROFILES} == {"default": False, "default-s1": False, "tiny": True}
    assert is_smoke_profile(None) is False
