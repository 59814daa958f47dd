"""`emsteer reproduce` says what it will do and about how long it will take before it starts
(`training.reproduce_estimate`): units of work left, priced from configs/timing.toml and scaled by this machine."""

from __future__ import annotations

import pytest

from interventions.errors import EmsteerError


def test_the_estimate_counts_what_is_left_and_prices_it(tiny_organisms, tmp_path) -> None:
    from training.reproduce import plan_reproduce
    from training.reproduce_estimate import _timing_table, estimate_reproduce, plan_lines

    plan = plan_reproduce(tmp_path / "run", profile="tiny", display="none", jobs=2)
    per_unit, reference, _ = _timing_table("tiny")
    est = estimate_reproduce(plan, speed=reference)  # a machine exactly as fast as the reference
    assert est.units == {"organism": 0, "finetune": 6, "extract": 2, "transfer": 2, "calibrate_cell": 12,
                         "sweep_cell": 24, "audit": 2, "report": 1}  # organisms cached by the fixture
    assert est.seconds["sweep_cell"] == pytest.approx(24 * per_unit["sweep_cell"] / 2)
    assert est.seconds["transfer"] == pytest.approx(2 * per_unit["transfer"])  # not split across workers
    slower = estimate_reproduce(plan, speed=reference / 2)
    assert slower.total_s == pytest.approx(2 * est.total_s)
    lines = plan_lines(plan, est)
    assert lines[0].startswith("plan: profile tiny, grid tiny, families qwen, llama; 1 insecure + 1 secure seed(s)")
    assert "6 adapters to train" in lines[1] and "24 sweep cells" in lines[1] and "organisms" not in lines[1]
    assert "estimate: ~" in lines[2] and "a re-run does only what is missing" in lines[2]


def test_quick_plan_and_a_profile_without_timings(tiny_organisms, tmp_path, monkeypatch) -> None:
    from training.reproduce import plan_reproduce
    from training.reproduce_estimate import estimate_reproduce

    quick = plan_reproduce(tmp_path / "run", profile="tiny", quick=True, display="none", jobs=1)
    assert estimate_reproduce(quick, speed=93.0).units["finetune"] == 6  # the tiny grid has one seed already
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "timing.toml").write_text('measured_on = "x"\nreference_gflops = 1.0\n')
    monkeypatch.setenv("EMSTEER_CONFIGS", str(tmp_path / "configs"))
    with pytest.raises(EmsteerError, match=r"timing.toml has no \[profiles.tiny\] table"):
        estimate_reproduce(quick, speed=1.0)


def test_machine_speed_is_a_positive_rate() -> None:
    from training.reproduce_estimate import machine_speed

    assert 0.1 < machine_speed(n=128, repeats=3) < 1e5
