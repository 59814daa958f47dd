"""Variant registry on a fake run directory with saved directions."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

from evals.grid import expand_cells, parse_grid
from interventions import registry, run_layout
from interventions.directions import Direction, save_direction, sha256_file
from interventions.errors import EmsteerError
from interventions.registry import (VariantContext, VariantTraits, get_variant, register_variant, resolve_variant,
                                    variant_names, variant_traits, variants_with)

D = 16
N_LAYERS = 4
FAMILY = "qwen"


def _vec(seed: int, d: int = D) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def _save(path, vec, layer, R, model_id="micro-qwen", **extra):
    meta = {"model_id": model_id, "layer": layer, "mean_residual_norm": R, "pooling": "mean", **extra}
    return save_direction(path, Direction(vec, meta))


@pytest.fixture
def run(tmp_path):
    """RUN with own + secure directions at every layer of `qwen`, and a llama->qwen transfer at layer 3."""
    for i in range(N_LAYERS):
        _save(run_layout.own_direction_path(tmp_path, FAMILY, i), _vec(100 + i) * (i + 1), i, 10.0 + i)
        _save(run_layout.secure_direction_path(tmp_path, FAMILY, i), _vec(200 + i), i, 10.0 + i)
    _save(run_layout.transferred_direction_path(tmp_path, "llama", FAMILY), _vec(300), 3, 13.0, donor="llama")
    return tmp_path


def ctx(run, layer=3, seed=0, **kw) -> VariantContext:
    return VariantContext(family=FAMILY, run=run, layer=layer, n_layers=N_LAYERS, d_model=D, seed=seed, **kw)


def own_vec(run, layer):
    return _vec(100 + layer) * (layer + 1)


def test_layout_paths(tmp_path):
    assert run_layout.own_direction_path(tmp_path, "qwen", 2) == tmp_path / "directions/qwen/own/layer_2.safetensors"
    assert run_layout.secure_direction_path(tmp_path, "gemma", 0) == tmp_path / "directions/gemma/secure/layer_0.safetensors"
    assert run_layout.transferred_direction_path(tmp_path, "llama", "qwen") == (
        tmp_path / "transfer/llama_to_qwen/direction.safetensors")
    with pytest.raises(EmsteerError):
        run_layout.own_direction_path(tmp_path, "../etc", 0)
    with pytest.raises(EmsteerError, match="non-negative"):
        run_layout.own_direction_path(tmp_path, "qwen", -1)


def test_all_variants_registered():
    assert set(variant_names()) >= {"none", "own", "secure_control", "random", "orthogonal", "wrong_layer",
                                    "transferred"}


def test_discovery_imports_every_variant_module():
    from interventions import variants

    variant_names()
    for info in pkgutil.iter_modules(variants.__path__):
        assert f"interventions.variants.{info.name}" in importlib.sys.modules


def test_unknown_variant_lists_names(run):
    with pytest.raises(EmsteerError, match=r"unknown variant 'nope'; registered: none, orthogonal, own"):
        resolve_variant("nope", ctx(run))


def test_none(run):
    assert resolve_variant("none", ctx(run)) is None


def test_own(run):
    d = resolve_variant("own", ctx(run, layer=2))
    assert torch.equal(d.vector, own_vec(run, 2))
    assert d.metadata["variant"] == "own"
    assert d.mean_residual_norm == 12.0
    path = run_layout.own_direction_path(run, FAMILY, 2)
    assert d.sources == {str(path): sha256_file(path)}


def test_secure_control(run):
    d = resolve_variant("secure_control", ctx(run, layer=1))
    assert torch.equal(d.vector, _vec(201))
    assert d.metadata["variant"] == "secure_control"


@pytest.mark.parametrize("name", ["random", "orthogonal"])
def test_seeded_controls_are_deterministic_and_norm_matched(run, name):
    a = resolve_variant(name, ctx(run, seed=1))
    b = resolve_variant(name, ctx(run, seed=1))
    c = resolve_variant(name, ctx(run, seed=2))
    other_layer = resolve_variant(name, ctx(run, layer=2, seed=1))
    assert torch.equal(a.vector, b.vector)
    assert not torch.allclose(a.vector, c.vector)
    assert not torch.allclose(a.vector, matched(other_layer.vector, a.norm))
    own = own_vec(run, 3)
    assert a.norm == pytest.approx(float(own.double().norm()), rel=1e-6)
    assert float(a.metadata["norm"]) == pytest.approx(a.norm, rel=1e-6)
    assert a.metadata["variant"] == name and a.metadata["seed"] == "1"
    assert a.mean_residual_norm == 13.0 and a.layer == 3 and a.model_id == "micro-qwen"  # the target layer's R
    assert str(run_layout.own_direction_path(run, FAMILY, 3)) in a.sources
    cos = torch.nn.functional.cosine_similarity(a.vector.double(), own.double(), dim=0)
    if name == "orthogonal":
        assert abs(float(cos)) < 1e-6
    else:
        assert abs(float(cos)) > 1e-6  # a random Gaussian is not orthogonal by construction


def matched(v, n):
    return v / v.norm() * n


def test_random_known_answer(run):
    """The random control is exactly the seeded Gaussian rescaled (pins the seeding scheme)."""
    from interventions.variants.random_control import control_seed, seeded_gaussian

    a = resolve_variant("random", ctx(run, seed=7))
    s = control_seed(7, "random", FAMILY, 3)
    g = seeded_gaussian(D, s)
    expected = (g / g.norm() * own_vec(run, 3).double().norm()).float()
    torch.testing.assert_close(a.vector, expected, atol=1e-6, rtol=1e-6)
    assert a.metadata["control_seed"] == str(s)
    assert control_seed(7, "random", FAMILY, 3) == s  # stable


def test_wrong_layer_uses_middle_layer_direction_at_target_norm(run):
    d = resolve_variant("wrong_layer", ctx(run, layer=3))
    mid = N_LAYERS // 2
    cos = torch.nn.functional.cosine_similarity(d.vector.double(), own_vec(run, mid).double(), dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-6)
    assert d.norm == pytest.approx(float(own_vec(run, 3).norm()), rel=1e-6)
    assert d.metadata["source_layer"] == str(mid)
    assert d.mean_residual_norm == 13.0 and d.layer == 3  # R of the target layer, not of the middle one
    assert str(run_layout.own_direction_path(run, FAMILY, mid)) in d.sources
    assert str(run_layout.own_direction_path(run, FAMILY, 3)) in d.sources


def test_wrong_layer_at_middle_layer_borrows_a_neighbour(run):
    from interventions.variants.wrong_layer import wrong_layer_source

    assert wrong_layer_source(3, 4) == 2
    assert wrong_layer_source(2, 4) == 1
    assert wrong_layer_source(0, 1 + 1) == 1
    d = resolve_variant("wrong_layer", ctx(run, layer=2))
    cos = torch.nn.functional.cosine_similarity(d.vector.double(), own_vec(run, 1).double(), dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(EmsteerError, match="at least 2"):
        wrong_layer_source(0, 1)


def test_transferred(run):
    d = resolve_variant("transferred", ctx(run, donor="llama"))
    assert torch.equal(d.vector, _vec(300))
    assert d.metadata["variant"] == "transferred" and d.metadata["donor"] == "llama"
    with pytest.raises(EmsteerError, match="needs a donor"):
        resolve_variant("transferred", ctx(run))
    with pytest.raises(EmsteerError, match=r"missing .*gemma_to_qwen.*emsteer transfer --run .* --src gemma --tgt qwen"):
        resolve_variant("transferred", ctx(run, donor="gemma"))


def test_transferred_fills_missing_R_from_own(run):
    path = run_layout.transferred_direction_path(run, "gemma", FAMILY)
    save_direction(path, Direction(_vec(301), {"model_id": "micro-qwen"}))
    d = resolve_variant("transferred", ctx(run, donor="gemma"))
    assert d.mean_residual_norm == 13.0
    assert str(run_layout.own_direction_path(run, FAMILY, 3)) in d.sources


def test_transferred_width_mismatch(run):
    path = run_layout.transferred_direction_path(run, "gemma", FAMILY)
    save_direction(path, Direction(_vec(301, d=24), {"model_id": "micro-qwen"}))
    with pytest.raises(EmsteerError, match="width 24 does not match the model's hidden size 16"):
        resolve_variant("transferred", ctx(run, donor="gemma"))


@pytest.mark.parametrize("name", ["own", "random", "orthogonal", "wrong_layer", "secure_control"])
def test_missing_files_name_path_and_command(tmp_path, name):
    with pytest.raises(EmsteerError) as ei:
        resolve_variant(name, ctx(tmp_path))
    msg = str(ei.value)
    assert "directions/qwen/" in msg and "layer_" in msg
    assert f"emsteer extract --run {tmp_path} --family qwen" in msg


def test_model_id_and_recorded_layer_are_checked(run):
    with pytest.raises(EmsteerError, match="made for model 'micro-qwen', not 'other'"):
        resolve_variant("own", ctx(run, model_id="other"))
    assert resolve_variant("own", ctx(run, model_id="micro-qwen")) is not None
    _save(run_layout.own_direction_path(run, FAMILY, 1), _vec(5), 2, 1.0)  # misplaced file
    with pytest.raises(EmsteerError, match="records layer 2, expected layer 1"):
        resolve_variant("own", ctx(run, layer=1))
    _save(run_layout.own_direction_path(run, FAMILY, 3), _vec(5), -1, 1.0)  # negative recorded layer is fine
    assert resolve_variant("own", ctx(run, layer=3)) is not None


def test_context_validation(run):
    with pytest.raises(EmsteerError, match="out of range"):
        ctx(run, layer=4)
    with pytest.raises(EmsteerError, match="out of range"):
        ctx(run, layer=-1)


def test_register_new_variant_and_duplicates(run, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_variant("double_own")
    def double_own(c):
        d = get_variant("own")(c)
        return Direction(d.vector * 2, d.metadata, d.sources)

    assert "double_own" in variant_names()
    assert torch.equal(resolve_variant("double_own", ctx(run)).vector, own_vec(run, 3) * 2)

    with pytest.raises(EmsteerError, match="already registered"):
        @register_variant("own")
        def other(c):
            return None


def test_variant_traits_give_the_lists_the_harness_uses():
    assert variants_with(file_backed=True) == ["own", "secure_control", "transferred"]  # `-M direction` may replace
    assert variants_with(transfer=True) == ["transferred", "transferred_random"]
    assert variants_with(controls="own") == ["orthogonal", "random", "secure_control", "wrong_layer"]
    assert variants_with(controls="transferred") == variants_with(repeated_draws=True) == ["transferred_random"]
    assert variant_traits("none") == VariantTraits()
    with pytest.raises(EmsteerError, match="unknown variant trait 'needs_file'; traits: file_backed, transfer"):
        variants_with(needs_file=True)


def test_a_registered_variant_with_traits_shows_up_in_the_derived_lists(monkeypatch):
    variant_names()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_variant("transferred_orthogonal", transfer=True, controls="transferred", repeated_draws=True)
    def transferred_orthogonal(c):
        return None

    assert variants_with(transfer=True) == ["transferred", "transferred_orthogonal", "transferred_random"]
    assert "transferred_orthogonal" in variants_with(controls="transferred")
    grid = parse_grid({"grid": {"families": ["qwen", "llama"]},
                       "transfer": {"pairs": ["qwen->llama"], "random_draws": 2}})
    assert grid.transfer_variants == ("transferred", "transferred_orthogonal", "transferred_random")
    cells = [c for c in expand_cells(grid) if c.variant == "transferred_orthogonal"]
    assert [(c.donor, c.family, c.control_seed) for c in cells] == [("qwen", "llama", 0), ("qwen", "llama", 1)]
    with pytest.raises(EmsteerError, match=r"\[grid\] variants: unknown name 'transferred_orthogonal'"):
        parse_grid({"grid": {"variants": ["transferred_orthogonal"]}})


def test_the_throwaway_variant_is_gone():
    assert "transferred_orthogonal" not in variant_names()
