"""`emsteer controls`: controls resolved through the variant registry, written, and summarised with matched
magnitude (synthetic direction files; no model needed)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from interventions.directions import Direction, load_direction, save_direction
from interventions.errors import EmsteerError
from interventions.registry import variants_with
from interventions.run_layout import (
    calibration_path,
    controls_summary_path,
    extraction_summary_path,
    own_direction_path,
    secure_direction_path,
)
from interventions.variants.wrong_layer import wrong_layer_source
from training.controls import cell_dir, run_controls

N_LAYERS, D, R = 4, 16, 7.5


@pytest.fixture
def run(tmp_path):
    """A run (manifest of the default profile) holding planted own and secure directions of qwen."""
    from training.run_manifest import ensure_run

    ensure_run(tmp_path, "default")
    g = torch.Generator().manual_seed(0)
    for layer in range(N_LAYERS):
        meta = {"model_id": "micro-qwen", "layer": layer, "mean_residual_norm": R + layer, "pooling": "response-mean"}
        save_direction(own_direction_path(tmp_path, "qwen", layer), Direction(torch.randn(D, generator=g) * 3, meta))
        save_direction(secure_direction_path(tmp_path, "qwen", layer), Direction(torch.randn(D, generator=g), meta))
    extraction_summary_path(tmp_path, "qwen").write_text(
        json.dumps({"n_layers": N_LAYERS, "d_model": D, "model_id": "micro-qwen"}))
    return tmp_path


def test_controls_have_matched_magnitude(run):
    s = run_controls(run, "qwen", layer=-1, seeds=[0, 1], alpha=2.0, log=lambda m: None)
    assert json.loads(controls_summary_path(run, "qwen").read_text()) == s
    own = load_direction(own_direction_path(run, "qwen", N_LAYERS - 1))
    cells = {c["seed"]: c for c in s["cells"]}
    assert set(cells) == {0, 1}
    for seed, cell in cells.items():
        assert cell["layer"] == N_LAYERS - 1 and cell["R"] == pytest.approx(R + N_LAYERS - 1)
        assert cell["magnitude"] == pytest.approx(2.0 * (R + N_LAYERS - 1))
        assert set(cell["controls"]) == set(variants_with(controls="own")) == {"random", "orthogonal", "wrong_layer",
                                                                              "secure_control"}
        for name, c in cell["controls"].items():
            assert c["magnitude"] == cell["magnitude"] and c["r_matches_own"], name
            d = load_direction(cell_dir(run, "qwen", N_LAYERS - 1, seed) / f"{name}.safetensors", expected_width=D)
            assert d.metadata["variant"] == name
        ctl = cell["controls"]
        for name in ("random", "orthogonal", "wrong_layer"):
            assert ctl[name]["norm"] == pytest.approx(own.norm, rel=1e-5)
        assert abs(ctl["orthogonal"]["cosine_with_own"]) < 1e-6
        assert ctl["wrong_layer"]["source_layer"] == wrong_layer_source(N_LAYERS - 1, N_LAYERS) == N_LAYERS // 2
    assert cells[0]["controls"]["random"]["cosine_with_own"] != cells[1]["controls"]["random"]["cosine_with_own"]


def test_missing_calibration_is_a_one_line_error_naming_its_command(run, monkeypatch, capsys):
    """No calibration and no --alpha: never a silent alpha of 1.0, but one line naming the command that writes it."""
    with pytest.raises(EmsteerError) as missing:
        run_controls(run, "qwen", seeds=[0], log=lambda m: None)
    assert "\n" not in str(missing.value)
    assert f"`emsteer sweep --run {run} --family qwen --calibrate`" in str(missing.value)
    assert not controls_summary_path(run, "qwen").exists()

    from training import cli

    monkeypatch.setattr(sys, "argv", ["emsteer", "controls", "--run", str(run), "--family", "qwen"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"emsteer sweep --run {run} --family qwen --calibrate" in err[0] and "--alpha" in err[0]
    calibration_path(run, "qwen").parent.mkdir(parents=True)
    for bad in ("{}", '{"alpha": "x"}', '{"alpha": true}', "[1]", "not json"):
        calibration_path(run, "qwen").write_text(bad)
        with pytest.raises(EmsteerError, match=r"remake it with `emsteer sweep --run .* --family qwen --calibrate`"):
            run_controls(run, "qwen", seeds=[0], log=lambda m: None)


def test_rerun_is_noop_and_alpha_comes_from_calibration(run):
    calibration_path(run, "qwen").parent.mkdir(parents=True)
    calibration_path(run, "qwen").write_text(json.dumps({"alpha": 0.25}))
    run_controls(run, "qwen", seeds=[0], log=lambda m: None)
    f = cell_dir(run, "qwen", N_LAYERS - 1, 0) / "random.safetensors"
    mtime = f.stat().st_mtime_ns
    said = []
    s = run_controls(run, "qwen", seeds=[0], log=said.append)
    assert any("up to date" in m for m in said) and f.stat().st_mtime_ns == mtime
    (cell,) = s["cells"]
    assert cell["alpha"] == 0.25 and "calibration" in cell["alpha_source"]
    (cell,) = run_controls(run, "qwen", seeds=[0], alpha=2.0, log=lambda m: None)["cells"]  # a given alpha wins
    assert cell["alpha"] == 2.0 and cell["alpha_source"] == "command line"


def test_missing_inputs_are_clear_errors(run, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(EmsteerError, match="emsteer extract --run"):
        run_controls(empty, "qwen", log=lambda m: None)
    secure_direction_path(run, "qwen", 1).unlink()
    with pytest.raises(EmsteerError, match="secure-control direction"):
        run_controls(run, "qwen", layer=1, alpha=1.0, log=lambda m: None)
    assert not cell_dir(run, "qwen", 1, 0).exists()
    with pytest.raises(EmsteerError, match="out of range"):
        run_controls(run, "qwen", layer=9, alpha=1.0, log=lambda m: None)


def test_a_negative_or_infinite_alpha_is_refused(tmp_path):
    from training.controls import calibrated_alpha

    assert calibrated_alpha(tmp_path, "qwen", 0.5) == (0.5, "command line")
    for bad in (-1.0, float("inf")):
        with pytest.raises(EmsteerError, match="--alpha must be a finite size >= 0"):
            calibrated_alpha(tmp_path, "qwen", bad)
