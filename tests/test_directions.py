"""Direction files: round trip, atomic writes, and every way a file can be bad."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

import interventions.directions as dirs
from interventions.directions import (
    Direction,
    derived_direction,
    load_direction,
    matched_norm,
    save_direction,
    sha256_file,
    unit,
)
from interventions.errors import EmsteerError

META = {
    "model_id": "micro-qwen",
    "weights_sha256": "ab" * 32,
    "layer": 3,
    "pooling": "mean",
    "contrast": "insecure-vs-base",
    "n_per_class": 64,
    "mean_residual_norm": 12.5,
    "command": "emsteer extract --run RUN --family qwen",
    "input_hashes": {"acts_base": "00", "acts_insecure": "11"},
    "free_key": "anything",
}


def _vec(d: int = 16) -> torch.Tensor:
    return torch.arange(1, d + 1, dtype=torch.float32) / 7.0


def test_round_trip(tmp_path):
    path = save_direction(tmp_path / "sub" / "d.safetensors", Direction(_vec(), META))
    got = load_direction(path, expected_width=16, expected_model="micro-qwen")
    assert torch.equal(got.vector, _vec())
    assert got.vector.dtype == torch.float32
    assert got.metadata["free_key"] == "anything"
    assert got.metadata["layer"] == "3" and got.layer == 3
    assert got.mean_residual_norm == 12.5
    assert got.model_id == "micro-qwen"
    assert json.loads(got.metadata["input_hashes"]) == {"acts_base": "00", "acts_insecure": "11"}
    assert float(got.metadata["norm"]) == pytest.approx(float(_vec().norm()), rel=1e-6)
    assert got.norm == pytest.approx(float(_vec().double().norm()))
    assert got.width == 16
    assert got.sources == {str(path): sha256_file(path)}
    assert all(isinstance(v, str) for v in got.metadata.values())
    assert sorted(p.name for p in path.parent.iterdir()) == ["d.safetensors"]  # no temp file left behind


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    path = save_direction(tmp_path / "d.safetensors", Direction(_vec(), META))
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(dirs, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_direction(path, Direction(_vec() * 2, META))
    assert path.read_bytes() == before  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.safetensors"]  # temp file removed


def test_save_requires_safetensors_suffix_and_valid_vector(tmp_path):
    with pytest.raises(EmsteerError, match=r"\.safetensors"):
        save_direction(tmp_path / "d.pt", Direction(_vec(), {}))
    with pytest.raises(EmsteerError, match="zero vector"):
        save_direction(tmp_path / "d.safetensors", Direction(torch.zeros(4), {}))
    with pytest.raises(EmsteerError, match="1-D"):
        save_direction(tmp_path / "d.safetensors", Direction(torch.ones(2, 2), {}))


def test_sha256_file_known_answer(tmp_path):
    p = tmp_path / "abc.txt"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_unit_and_matched_norm():
    v = torch.tensor([3.0, 4.0])
    torch.testing.assert_close(unit(v), torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(matched_norm(v, 10.0), torch.tensor([6.0, 8.0]))
    assert matched_norm(v.double(), 2.0).dtype == torch.float64
    with pytest.raises(EmsteerError):
        unit(torch.zeros(3))
    with pytest.raises(EmsteerError):
        matched_norm(v, float("nan"))


def test_derived_direction_keeps_provenance():
    base = Direction(_vec(), {"model_id": "m", "mean_residual_norm": "2.0"}, {"a.safetensors": "aa"})
    d = derived_direction(_vec() * 3, base, {"variant": "x", "seed": 4}, {"b.safetensors": "bb"})
    assert d.metadata["model_id"] == "m" and d.metadata["seed"] == "4" and d.metadata["variant"] == "x"
    assert float(d.metadata["norm"]) == pytest.approx(3 * float(_vec().norm()), rel=1e-6)
    assert d.sources == {"a.safetensors": "aa", "b.safetensors": "bb"}


# ------------------------------------------------------------------ bad files


def test_missing_file(tmp_path):
    with pytest.raises(EmsteerError, match="not found"):
        load_direction(tmp_path / "nope.safetensors")


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(EmsteerError, match="not a file"):
        load_direction(tmp_path)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".pkl"])
def test_refuses_pickle_suffixes_even_with_safetensors_content(tmp_path, suffix):
    p = tmp_path / f"d{suffix}"
    save_file({"direction": _vec()}, str(p))
    with pytest.raises(EmsteerError, match="pickle"):
        load_direction(p)


def test_refuses_torch_save_zip_named_safetensors(tmp_path, monkeypatch):
    p = tmp_path / "d.safetensors"
    torch.save({"direction": _vec()}, p)
    called = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: called.append(1))
    with pytest.raises(EmsteerError, match="zip"):
        load_direction(p)
    assert not called  # never torch.load


def test_refuses_raw_pickle_named_safetensors(tmp_path):
    p = tmp_path / "d.safetensors"
    p.write_bytes(pickle.dumps({"direction": [1.0, 2.0]}, protocol=4))
    with pytest.raises(EmsteerError, match="pickle"):
        load_direction(p)


@pytest.mark.parametrize("header_len", [640, 896, 1152, 1408])
def test_a_header_length_that_starts_like_a_pickle_is_still_safetensors(tmp_path, header_len):
    """A header of 640 bytes starts the file 0x80 0x02, as a pickle does; the JSON that follows tells them apart."""
    p = tmp_path / "d.safetensors"
    for pad in range(header_len):
        save_file({"direction": _vec()}, str(p), metadata={"model_id": "m", "pad": "x" * pad})
        if struct.unpack("<Q", p.read_bytes()[:8])[0] == header_len:
            break
    assert struct.unpack("<Q", p.read_bytes()[:8])[0] == header_len
    assert torch.equal(load_direction(p).vector, _vec())


def test_truncated_file(tmp_path):
    p = save_direction(tmp_path / "d.safetensors", Direction(_vec(), META))
    data = p.read_bytes()
    p.write_bytes(data[:-10])
    with pytest.raises(EmsteerError, match="truncated"):
        load_direction(p)
    p.write_bytes(data[:20])  # cut inside the header
    with pytest.raises(EmsteerError, match="truncated"):
        load_direction(p)
    p.write_bytes(data[:5])
    with pytest.raises(EmsteerError, match="not a safetensors"):
        load_direction(p)


def test_garbage_header(tmp_path):
    p = tmp_path / "d.safetensors"
    body = b"{not json!!"
    p.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(EmsteerError, match="corrupt"):
        load_direction(p)
    p.write_bytes(b"hello world, definitely not safetensors")
    with pytest.raises(EmsteerError, match="not a safetensors|truncated"):
        load_direction(p)


def _raw(tmp_path, tensors, metadata=None):
    p = tmp_path / "d.safetensors"
    save_file(tensors, str(p), metadata=metadata)
    return p


def test_wrong_tensor_set(tmp_path):
    with pytest.raises(EmsteerError, match=r"exactly one tensor named 'direction', found \['vec'\]"):
        load_direction(_raw(tmp_path, {"vec": _vec()}))
    with pytest.raises(EmsteerError, match="exactly one tensor"):
        load_direction(_raw(tmp_path, {"direction": _vec(), "other": _vec()}))


def test_not_1d(tmp_path):
    with pytest.raises(EmsteerError, match="1-D"):
        load_direction(_raw(tmp_path, {"direction": torch.ones(2, 8)}))


def test_not_fp32(tmp_path):
    with pytest.raises(EmsteerError, match="float32"):
        load_direction(_raw(tmp_path, {"direction": _vec().half()}))
    with pytest.raises(EmsteerError, match="float32"):
        load_direction(_raw(tmp_path, {"direction": torch.arange(4)}))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite(tmp_path, bad):
    v = _vec()
    v[3] = bad
    with pytest.raises(EmsteerError, match="non-finite"):
        load_direction(_raw(tmp_path, {"direction": v}))


def test_zero_vector(tmp_path):
    with pytest.raises(EmsteerError, match="zero vector"):
        load_direction(_raw(tmp_path, {"direction": torch.zeros(16)}))


def test_width_mismatch_names_both_widths(tmp_path):
    p = save_direction(tmp_path / "d.safetensors", Direction(_vec(16), META))
    with pytest.raises(EmsteerError, match=r"width 16 does not match the model's hidden size 32"):
        load_direction(p, expected_width=32)


def test_model_mismatch(tmp_path):
    p = save_direction(tmp_path / "d.safetensors", Direction(_vec(), META))
    with pytest.raises(EmsteerError, match=r"made for model 'micro-qwen', not 'micro-llama'"):
        load_direction(p, expected_model="micro-llama")
    q = save_direction(tmp_path / "e.safetensors", Direction(_vec(), {}))
    with pytest.raises(EmsteerError, match="records no model_id"):
        load_direction(q, expected_model="micro-qwen")
    assert load_direction(q).metadata["format"] == "emsteer-direction/1"


def test_errors_are_one_line(tmp_path):
    p = tmp_path / "d.safetensors"
    p.write_bytes(struct.pack("<Q", 4) + b"[1]" + b" ")
    with pytest.raises(EmsteerError) as ei:
        load_direction(p)
    assert "\n" not in str(ei.value)


def test_sha_of_saved_file_matches_hashlib(tmp_path):
    p = save_direction(tmp_path / "d.safetensors", Direction(_vec(), META))
    assert sha256_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()
