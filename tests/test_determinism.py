"""Same inputs, same outputs (issue 8, item 2).

- the same seed gives byte-identical completions across two evals (sampling at temperature 1) and
  byte-identical artifacts across two runs: LoRA adapters, finetune metadata, directions, controls;
- greedy completions of the micro organism do not change with `max_connections`, `max_batch_size` or
  which other samples share a batch;
- property tests (hypothesis) on a tiny random-init model: `steer` changes a hooked layer's output by exactly
  -alpha*R*unit(d) (subtract) / +alpha*R*unit(d) (add) at the edited positions and nothing anywhere else;
  ablation removes exactly the component along d; hooks leave no trace after the block; `matched_norm` gives
  the requested norm and keeps the direction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import Qwen2Config, Qwen2ForCausalLM

from interventions.directions import matched_norm, unit
from interventions.hooks import Intervention, capture, steer

# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on one thread: faster on a shared machine, and no thread-count-dependent reductions."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def organism(emsteer_cache) -> Path:
    from training.organisms import build_organism

    return build_organism("qwen", "tiny", progress=False, log=lambda m: None)


def _eval(log_dir: Path, model_args: dict[str, Any], **kw: Any):
    from inspect_ai import eval as inspect_eval

    from evals.spillover import spillover

    task_args = {"profile": "tiny", "max_tokens": 16, "temperature": kw.pop("temperature", 0.0)}
    kw.setdefault("limit", 10)
    logs = inspect_eval(spillover(**task_args), model="steer/micro-qwen", model_args={"profile": "tiny", **model_args},
                        log_dir=str(log_dir), display="none", **kw)
    assert len(logs) == 1 and logs[0].status == "success", logs[0].error
    return {str(s.id): s.output.completion for s in logs[0].samples}


# ------------------------------------------------------------------------------------------- completions

def test_same_seed_same_sampled_completions(organism, tmp_path):
    first = _eval(tmp_path / "a", {"seed": 5}, temperature=1.0)
    second = _eval(tmp_path / "b", {"seed": 5, "max_batch_size": 3}, temperature=1.0, max_connections=4)
    other = _eval(tmp_path / "c", {"seed": 6}, temperature=1.0)
    assert first == second  # byte-identical, whatever the batching
    assert first != other  # and the seed matters


def test_greedy_unchanged_by_connections_and_batch_composition(organism, tmp_path):
    everything = _eval(tmp_path / "all", {})
    one_at_a_time = _eval(tmp_path / "one", {"max_batch_size": 1}, max_connections=1)
    pairs = _eval(tmp_path / "pairs", {"max_batch_size": 2}, max_connections=2)
    ids = sorted(everything)
    subset = ids[::3]  # other batch neighbours: only every third sample
    alone = _eval(tmp_path / "subset", {}, sample_id=subset, limit=None)
    assert one_at_a_time == everything and pairs == everything
    assert alone == {i: everything[i] for i in subset}


# ------------------------------------------------------------------------------------------- artifacts

VOLATILE = {"created", "updated", "duration_seconds", "train_seconds", "seconds_per_step", "seconds"}


def _stable(obj: Any) -> Any:
    """`obj` without wall-clock times (which legitimately differ between two runs)."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _build(run: Path, force: bool) -> None:
    """insecure + secure adapters (seed 0), the directions (`extract`) and the controls (seeds 0, 1)."""
    from training.controls import run_controls
    from training.extract import run_extract
    from training.finetune import finetune

    for arm in ("insecure", "secure"):
        finetune(run, "qwen", arm, 0, "tiny", evaluate=False, force=force, log=lambda m: None)
    run_extract(run, "qwen", profile="tiny", force=force, log=lambda m: None)
    run_controls(run, "qwen", seeds=[0, 1], alpha=1.0, force=force, log=lambda m: None)


@pytest.fixture(scope="module")
def two_runs(organism, tmp_path_factory) -> tuple[dict[str, bytes], dict[str, bytes], list[tuple[int, int]]]:
    """Every file of one run directory after building it, and again after rebuilding it all (--force)."""
    run = tmp_path_factory.mktemp("determinism") / "run"
    _build(run, force=False)
    first = _tree(run)
    weights = run / "adapters/qwen/insecure/seed_0/adapter_model.safetensors"
    stamps = [(weights.stat().st_ino, weights.stat().st_mtime_ns)]
    _build(run, force=True)
    stamps.append((weights.stat().st_ino, weights.stat().st_mtime_ns))
    return first, _tree(run), stamps


def test_rebuild_really_rewrote(two_runs):
    first, second, stamps = two_runs
    name = "adapters/qwen/insecure/seed_0/finetune.json"
    assert json.loads(first[name])["created"] <= json.loads(second[name])["created"]
    assert stamps[0] != stamps[1]  # a new file took the old one's place (atomic publish of the retrained adapter)


@pytest.mark.parametrize("part", ["adapters", "directions", "controls"])
def test_artifacts_are_identical(two_runs, part):
    """Same inputs and seed: every safetensors file byte for byte (so its sha256, recorded as provenance, is
    stable) and every JSON record apart from wall-clock times."""
    first, second, _ = two_runs
    names = sorted(n for n in first if n.startswith(part + "/"))
    assert names and names == sorted(n for n in second if n.startswith(part + "/"))
    assert any(n.endswith(".safetensors") for n in names)
    for name in names:
        if name.endswith(".json"):
            assert _stable(json.loads(first[name])) == _stable(json.loads(second[name])), name
        else:
            assert first[name] == second[name], name


# ------------------------------------------------------------------------------------------- hooks (hypothesis)

D, N_LAYERS, SEQ = 16, 3, 7


@pytest.fixture(scope="module")
def tiny_model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=40, hidden_size=D, intermediate_size=32, num_hidden_layers=N_LAYERS,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return Qwen2ForCausalLM(cfg).eval()


def _layer_outputs(model: Qwen2ForCausalLM, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    with capture(model, list(range(N_LAYERS)), lambda i, h: h.clone()) as out, torch.no_grad():
        model(ids, use_cache=False)
    return dict(out)


_vectors = st.lists(st.floats(-5, 5, allow_nan=False, allow_infinity=False), min_size=D, max_size=D).filter(
    lambda v: math.sqrt(sum(x * x for x in v)) > 1e-2)
_HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_HYP
@given(d=_vectors, alpha=st.floats(-8, 8, allow_nan=False), R=st.floats(0.05, 20), layer=st.integers(0, N_LAYERS - 1),
       op=st.sampled_from(["add", "subtract"]), prompt_len=st.one_of(st.none(), st.integers(0, SEQ)),
       seed=st.integers(0, 1000))
def test_steer_moves_exactly_the_hooked_positions(tiny_model, d, alpha, R, layer, op, prompt_len, seed):
    ids = torch.randint(0, 40, (2, SEQ), generator=torch.Generator().manual_seed(seed))
    direction = torch.tensor(d, dtype=torch.float32)
    plain = _layer_outputs(tiny_model, ids)
    positions = "all" if prompt_len is None else "generated"
    iv = Intervention(op=op, direction=direction, layers=[layer], alpha=alpha, R=R, positions=positions)
    with steer(tiny_model, iv, prompt_lengths=prompt_len):
        steered = _layer_outputs(tiny_model, ids)
    after = _layer_outputs(tiny_model, ids)
    sign = 1.0 if op == "add" else -1.0
    expected = sign * alpha * R * unit(direction.double())
    start = 0 if prompt_len is None else prompt_len
    for i in range(layer):  # layers before the hooked one: untouched
        assert torch.equal(steered[i], plain[i])
    delta = (steered[layer] - plain[layer]).double()
    assert torch.equal(steered[layer][:, :start], plain[layer][:, :start])  # prompt positions: untouched
    if start < SEQ:
        tol = 1e-5 * (1.0 + plain[layer].abs().max().item() + abs(alpha) * R)
        assert torch.allclose(delta[:, start:], expected.expand_as(delta[:, start:]), atol=tol, rtol=0)
        assert abs(delta[0, -1].norm().item() - abs(alpha) * R) <= tol * 4
    for i in range(N_LAYERS):  # no trace once the block has exited
        assert torch.equal(after[i], plain[i])


@_HYP
@given(d=_vectors, layer=st.integers(0, N_LAYERS - 1), seed=st.integers(0, 1000))
def test_ablate_removes_exactly_the_component(tiny_model, d, layer, seed):
    ids = torch.randint(0, 40, (1, SEQ), generator=torch.Generator().manual_seed(seed))
    u = unit(torch.tensor(d, dtype=torch.float64))
    plain = _layer_outputs(tiny_model, ids)
    iv = Intervention(op="ablate", direction=torch.tensor(d, dtype=torch.float32), layers=[layer])
    with steer(tiny_model, iv):
        ablated = _layer_outputs(tiny_model, ids)
    h, a = plain[layer].double(), ablated[layer].double()
    scale = 1e-5 * (1.0 + h.abs().max().item())
    assert (a @ u).abs().max().item() <= scale  # nothing left along d
    assert torch.allclose(a, h - (h @ u).unsqueeze(-1) * u, atol=scale, rtol=0)  # and nothing else changed


@settings(max_examples=200, deadline=None)
@given(v=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=64).filter(
    lambda v: math.sqrt(sum(x * x for x in v)) > 1e-3), target=st.one_of(st.just(0.0), st.floats(1e-6, 1e4)))
def test_matched_norm_gives_the_requested_norm(v, target):
    vec = torch.tensor(v, dtype=torch.float64)
    out = matched_norm(vec, target)
    assert out.dtype == vec.dtype and out.shape == vec.shape
    assert math.isclose(float(out.norm()), target, rel_tol=1e-9, abs_tol=1e-9)
    if target > 0:
        assert math.isclose(float(torch.dot(unit(out), unit(vec))), 1.0, rel_tol=1e-9)  # same direction
    again = matched_norm(out, target) if target > 0 else out
    assert torch.allclose(again, out, rtol=1e-12, atol=1e-9)  # idempotent
