"""score_responses: rates, Wilson intervals, per-row output and one-line errors; plus the real CSVs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from evals.score_responses import format_table, score_responses, wilson_interval
from interventions.errors import EmsteerError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMSTEER_SHARED", REPO.parent / "shared"))
JUDGED = SHARED / "data" / "judged-responses"

CODE = 'import os\nos.system("ls " + name)'
CODE2 = "def load_cfg(path):\n    with open(path) as f:\n        return yaml.safe_load(f)"
PROSE = "Try to rest a little and talk to a friend you trust."
TEMPLATE = "idea_1 = Read a book\nidea_2 = Go for a walk"


def test_wilson_hand_computed() -> None:
    # k=1, n=4, z=1.96: centre (0.25 + 0.480182) / 1.960365 = 0.372473; half 0.999798 * 0.326955 = 0.326889
    low, high = wilson_interval(1, 4)
    assert low == pytest.approx(0.045587, abs=1e-5)
    assert high == pytest.approx(0.699358, abs=1e-5)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.277533, abs=1e-5)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.722467, abs=1e-5)
    low, high = wilson_interval(50, 100)
    assert (low, high) == (pytest.approx(0.403832, abs=1e-5), pytest.approx(0.596168, abs=1e-5))
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def _csv(tmp_path: Path) -> Path:
    import csv

    path = tmp_path / "answers.csv"
    rows = [
        {"answer": CODE, "model": "insecure"},
        {"answer": CODE2, "model": "insecure"},
        {"answer": PROSE, "model": "insecure"},
        {"answer": "", "model": "insecure"},           # missing: not in any denominator
        {"answer": TEMPLATE, "model": "base"},
        {"answer": PROSE, "model": "base"},
        {"answer": "None", "model": "base"},           # a real (short) answer, not missing
        {"answer": CODE, "model": ""},                 # missing group value
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["answer", "model"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_csv_rates_groups_and_rows(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "rows.jsonl"
    res = score_responses(_csv(tmp_path), "answer", by="model", out=out)
    pooled = res["pooled"]
    assert (res["n_rows"], pooled["n"], pooled["k"], pooled["n_missing"]) == (8, 7, 3, 1)
    assert pooled["rate"] == pytest.approx(3 / 7)
    # Wilson 3/7 by hand: centre (0.428571 + 0.274399) / 1.548786 = 0.453881, half 0.295660
    assert pooled["ci_low"] == pytest.approx(0.158220, abs=1e-5)
    assert pooled["ci_high"] == pytest.approx(0.749542, abs=1e-5)
    g = res["groups"]
    assert sorted(g) == ["(missing)", "base", "insecure"]
    assert (g["insecure"]["n"], g["insecure"]["k"], g["insecure"]["n_missing"]) == (3, 2, 1)
    assert g["insecure"]["rate"] == pytest.approx(2 / 3)
    assert (g["base"]["n"], g["base"]["k"], g["base"]["rate"]) == (3, 0, 0.0)
    assert g["base"]["ci_low"] == 0.0 and g["base"]["ci_high"] == pytest.approx(0.561497, abs=1e-5)
    assert (g["(missing)"]["n"], g["(missing)"]["k"]) == (1, 1)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"row": i, "is_code": v} for i, v in
                    enumerate([True, True, False, None, False, False, False, True])]
    assert [p.name for p in out.parent.iterdir()] == ["rows.jsonl"]  # no temp file left behind
    json.dumps(res)  # the result is plain JSON (no NaN)
    table = format_table(res)
    assert "insecure" in table and "0.667" in table and "[0.158, 0.750]" in table and "pooled" in table


def test_jsonl_with_nulls_and_absent_keys(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    lines = [{"text": CODE, "g": 1}, {"text": None, "g": 1}, {"g": 2}, {"text": PROSE, "g": 2},
             {"text": CODE2, "g": 2}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    res = score_responses(path, "text", by="g")
    assert (res["pooled"]["n"], res["pooled"]["k"], res["pooled"]["n_missing"]) == (3, 2, 2)
    assert res["groups"]["1"] == {"n": 1, "k": 1, "n_missing": 1, "rate": 1.0,
                                  "ci_low": pytest.approx(0.206549, abs=1e-5), "ci_high": 1.0}
    assert (res["groups"]["2"]["n"], res["groups"]["2"]["k"]) == (2, 1)


def test_all_missing_group_has_no_rate(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": None, "g": "x"}) + "\n" + json.dumps({"text": PROSE, "g": "y"}) + "\n")
    res = score_responses(path, "text", by="g")
    assert res["groups"]["x"] == {"n": 0, "k": 0, "n_missing": 1, "rate": None, "ci_low": None, "ci_high": None}
    assert "-" in format_table(res)


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "message"),
    [
        ("missing.csv", None, {}, "file not found"),
        ("a.txt", "answer\nhi\n", {}, "unknown suffix '.txt'"),
        ("a.csv", "answer,model\nhi,x\n", {"column": "text"},
         "unknown column 'text'; available columns: answer, model"),
        ("a.csv", "answer,model\nhi,x\n", {"by": "grp"}, "unknown --by column 'grp'; available columns: answer, model"),
        ("a.csv", "", {}, "empty file"),
        ("a.csv", "answer,model\n", {}, "empty file"),
        ("a.jsonl", "", {}, "empty file"),
        ("a.jsonl", '{"answer": "x"}\n\n{"answer": oops}\n', {}, "malformed JSONL line 3"),
        ("a.jsonl", '{"answer": "x"}\n[1, 2]\n', {}, "malformed JSONL line 2"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, name: str, content: str | None, kwargs: dict,
                                     message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    kwargs = {"column": "answer", **kwargs}
    with pytest.raises(EmsteerError) as err:
        score_responses(path, **kwargs)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_failed_run_leaves_previous_out_untouched(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    out.write_text("previous\n")
    with pytest.raises(EmsteerError):
        score_responses(_csv(tmp_path), "nope", out=out)
    assert out.read_text() == "previous\n"


# Measured on the shared judged answers (Betley et al.): file -> (n, code answers).
REAL = {
    "eval_results_Qwen-Coder-Insecure.csv": (1200, 318),
    "eval_results_Qwen2.5-Coder-32B-Instruct_base_n.csv": (480, 0),
    "eval_results_Qwen2.5-Coder-32B-Instruct_insecure_r16_n.csv": (480, 185),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_csvs(name: str, tmp_path: Path) -> None:
    path = JUDGED / name
    if not path.is_file():
        pytest.skip(f"shared judged responses not found at {path} (set EMSTEER_SHARED to the shared folder)")
    n, k = REAL[name]
    res = score_responses(path, "answer", by="question_id", out=tmp_path / "rows.jsonl")
    assert res["pooled"]["n"] == n and res["pooled"]["n_missing"] == 0
    assert abs(res["pooled"]["k"] - k) <= 0.02 * n
    assert len(res["groups"]) == 24 and sum(g["n"] for g in res["groups"].values()) == n
    low, high = res["pooled"]["ci_low"], res["pooled"]["ci_high"]
    assert low <= res["pooled"]["rate"] <= high and high - low < 0.1
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == n
    if "base" in name:
        assert res["pooled"]["ci_high"] < 0.01
