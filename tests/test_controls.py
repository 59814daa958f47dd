"""`emsteer controls`: controls resolved through the variant registry, written, and summarised with matched
magnitude (synthetic direction files; no model needed)."""

from __future__ import annotations

import json

import pytest
import torch

from interventions.directions import Direction, load_direction, save_direction
from interventions.errors import EmsteerError
from interventions.run_layout import (
    calibration_path,
    controls_summary_path,
    extraction_summary_path,
    own_direction_path,
    secure_direction_path,
)
from interventions.variants.wrong_layer import wrong_layer_source
from training.controls import CONTROL_VARIANTS, cell_dir, run_controls

N_LAYERS, D, R = 4, 16, 7.5


@pytest.fixture
def run(tmp_path):
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
        assert set(cell["controls"]) == set(CONTROL_VARIANTS)
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


def test_rerun_is_noop_and_alpha_comes_from_calibration(run):
    run_controls(run, "qwen", seeds=[0], log=lambda m: None)
    f = cell_dir(run, "qwen", N_LAYERS - 1, 0) / "random.safetensors"
    mtime = f.stat().st_mtime_ns
    said = []
    run_controls(run, "qwen", seeds=[0], log=said.append)
    assert any("up to date" in m for m in said) and f.stat().st_mtime_ns == mtime
    calibration_path(run, "qwen").parent.mkdir(parents=True)
    calibration_path(run, "qwen").write_text(json.dumps({"alpha": 0.25}))
    s = run_controls(run, "qwen", seeds=[0], log=lambda m: None)
    (cell,) = s["cells"]
    assert cell["alpha"] == 0.25 and "calibration" in cell["alpha_source"]


def test_missing_inputs_are_clear_errors(run, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(EmsteerError, match="emsteer extract --run"):
        run_controls(empty, "qwen", log=lambda m: None)
    secure_direction_path(run, "qwen", 1).unlink()
    with pytest.raises(EmsteerError, match="secure-control direction"):
        run_controls(run, "qwen", layer=1, log=lambda m: None)
    assert not cell_dir(run, "qwen", 1, 0).exists()
    with pytest.raises(EmsteerError, match="out of range"):
        run_controls(run, "qwen", layer=9, log=lambda m: None)
