"""The worked examples of docs/extending.md work as written: a fifth family from one file and one TOML table (in a
subprocess, so it never stays registered), and a variant from one file whose traits put it in the derived lists
(registered into a copy of the registry for one test)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from evals.grid import expand_cells, parse_grid
from interventions import registry
from interventions.directions import Direction, load_direction, save_direction
from interventions.registry import VariantContext, resolve_variant, variant_names, variant_traits, variants_with
from interventions.run_layout import (controls_summary_path, extraction_summary_path, own_direction_path,
                                      secure_direction_path)
from training.controls import cell_dir, run_controls

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "extending.md"


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


FIFTH_FAMILY = """
import json, sys
import interventions.families as families
families.__path__.append(sys.argv[1])
families.discover_families()
from evals.grid import parse_grid
from interventions.families import family_for_model_type
from interventions.paths import FAMILIES
from interventions.presets import find_preset
from training.organisms import FAMILY_SEED_OFFSET, build_organism, verify_organism
from training.profiles import family_architecture
build_organism("mistral", "tiny", progress=False, log=lambda m: None)
info = verify_organism("mistral", "tiny")
print(json.dumps({"families": FAMILIES, "by_model_type": family_for_model_type("mistral").name,
                  "preset": find_preset("micro-mistral-steered").family, "seed_offset": FAMILY_SEED_OFFSET["mistral"],
                  "architecture": family_architecture("mistral", "tiny"),
                  "grid_all": parse_grid({"grid": {"families": "all"}}).families,
                  "class": info["class"], "hidden_size": info["hidden_size"]}))
"""


def test_adding_a_family_is_one_file_and_one_table(tmp_path):
    section = _section("Adding a family")
    family_file, = _blocks(section, "python")
    sizes, presets = _blocks(section, "toml")
    (tmp_path / "fams").mkdir()
    (tmp_path / "fams" / "mistral.py").write_text(family_file)
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    for name, table in (("organisms.toml", sizes), ("presets.toml", presets)):
        with open(configs / name, "a", encoding="utf-8") as fh:
            fh.write("\n" + table)
    env = {**os.environ, "EMSTEER_CONFIGS": str(configs), "EMSTEER_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", FIFTH_FAMILY, str(tmp_path / "fams")], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["families"] == ["qwen", "gemma", "llama", "ministral", "mistral"]
    assert out["grid_all"] == out["families"]
    assert out["by_model_type"] == out["preset"] == "mistral" and out["seed_offset"] == 4000
    assert out["architecture"][0] == out["class"] == "MistralForCausalLM" and out["hidden_size"] == 32


def _run_with_own(run: Path, n_layers: int = 4, d: int = 16) -> Path:
    g = torch.Generator().manual_seed(0)
    for layer in range(n_layers):
        meta = {"model_id": "micro-qwen", "layer": layer, "mean_residual_norm": 7.5, "pooling": "response-mean"}
        save_direction(own_direction_path(run, "qwen", layer), Direction(torch.randn(d, generator=g) * 3, meta))
        save_direction(secure_direction_path(run, "qwen", layer), Direction(torch.randn(d, generator=g), meta))
    extraction_summary_path(run, "qwen").write_text(json.dumps({"n_layers": n_layers, "d_model": d,
                                                                "model_id": "micro-qwen"}))
    return run


def test_adding_a_variant_is_one_file_with_its_traits(tmp_path, monkeypatch):
    variant_names()  # discover the shipped variants before the registry is copied
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    code, = _blocks(_section("Adding a variant"), "python")
    exec(compile(code, "interventions/variants/shuffled.py", "exec"), {"__name__": "docs_example_shuffled"})

    assert variant_traits("shuffled") == registry.VariantTraits(controls="own")
    assert variants_with(controls="own") == ["orthogonal", "random", "secure_control", "shuffled", "wrong_layer"]
    assert "shuffled" not in variants_with(transfer=True) + variants_with(file_backed=True)
    run = _run_with_own(tmp_path)
    ctx = VariantContext(family="qwen", run=run, layer=3, n_layers=4, d_model=16, seed=1)
    own, shuffled = resolve_variant("own", ctx), resolve_variant("shuffled", ctx)
    assert torch.allclose(shuffled.vector.sort().values, own.vector.sort().values)
    assert not torch.equal(shuffled.vector, own.vector) and shuffled.mean_residual_norm == own.mean_residual_norm
    # `emsteer controls` writes it with the other controls of the own direction
    summary = run_controls(run, "qwen", seeds=[1], alpha=1.0, log=lambda m: None)
    assert "shuffled" in summary["variants"] and "shuffled" in summary["cells"][0]["controls"]
    assert torch.equal(load_direction(cell_dir(run, "qwen", 3, 1) / "shuffled.safetensors").vector, shuffled.vector)
    assert json.loads(controls_summary_path(run, "qwen").read_text()) == summary
    # a grid may list it, and its cells are expanded like any single-family variant's
    grid = parse_grid({"grid": {"families": ["qwen"], "variants": ["own", "shuffled"]},
                       "dose": {"variants": ["shuffled"], "alphas": [1.0]}})
    assert {c.kind for c in expand_cells(grid) if c.variant == "shuffled"} == {"variant", "dose"}
