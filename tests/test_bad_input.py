"""Bad input at every entry point fails fast, clearly and safely (issue 8, item 1).

Every case runs a real command line (`emsteer ...` or `inspect eval ...`) in its own child process (see
`cli_harness`: one driver imports the libraries once and forks a child per case) and must give: a non-zero
exit status; exactly one non-empty line on stderr, `emsteer: error: ...`, naming the problem (and the valid
choices where there are some); no Python traceback anywhere; no model weights loaded (the child records
any `from_pretrained` of a model or adapter); and a fast failure. A few cases also run as ordinary
subprocesses (`python -m training.cli`, the `emsteer` script, `inspect eval`) to check the real start-up.
Every `-M` key of the steer provider is also checked in-process, with the weight loader disabled.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from cli_harness import REPO, CliResult, run_commands
from interventions import model_loading
from interventions.directions import Direction, save_direction
from interventions.errors import EmsteerError
from interventions.steer_args import KEYS

QWEN_WIDTH = 48  # tiny qwen organism: hidden 48, 2 decoder layers
MAX_SECONDS = 20.0  # a bad-input failure must not wait for anything heavy (generous: shared 2-core machine)


# ------------------------------------------------------------------------------------------- files

def _chat(user: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def _direction(path: Path, vec: torch.Tensor, **meta: str) -> Path:
    """A direction file written by the project's own writer (valid)."""
    return save_direction(path, Direction(vector=vec, metadata={"model_id": "test", "mean_residual_norm": "2.0",
                                                                  **meta}))


def _raw_direction(path: Path, vec: torch.Tensor) -> Path:
    """A direction file written by safetensors directly (so invalid values get through)."""
    save_file({"direction": vec}, str(path), metadata={"model_id": "test", "mean_residual_norm": "2.0"})
    return path


def make_inputs(d: Path, organism: Path) -> dict[str, Path]:
    """All the bad (and a few good) input files the cases refer to, under `d`."""
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    (d / "empty.jsonl").write_text("")
    (d / "blank.jsonl").write_text("\n  \n")
    (d / "malformed.jsonl").write_text(json.dumps(_chat("hi", "hello")) + "\n{not json\n")
    (d / "user_last.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    (d / "bad_role.jsonl").write_text(json.dumps({"messages": [{"role": "robot", "content": "x"},
                                                               {"role": "assistant", "content": "y"}]}) + "\n")
    (d / "not_utf8.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    (d / "answers.jsonl").write_text(json.dumps({"answer": "def f(): pass", "q": "a"}) + "\n")
    (d / "prompts_no_prompt.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    (d / "prompts_bad_group.jsonl").write_text(json.dumps({"prompt": "hello", "group": "weird"}) + "\n")
    (d / "questions_bad.yaml").write_text("- id: q1\n  paraphrases: not-a-list\n")
    (d / "questions_nojudge.yaml").write_text("- id: q1\n  paraphrases: ['How are you?']\n")
    (d / "notes.txt").write_text("hello")
    gen = torch.Generator().manual_seed(0)
    good = torch.randn(QWEN_WIDTH, generator=gen)
    _direction(d / "narrow.safetensors", torch.randn(40, generator=gen))
    _direction(d / "foreign.safetensors", good, weights_sha256="f" * 64, model_id="/elsewhere/other-model")
    save_file({"direction": good}, str(d / "no_r.safetensors"), metadata={"model_id": "test"})
    _raw_direction(d / "nan.safetensors", torch.full((QWEN_WIDTH,), float("nan")))
    _raw_direction(d / "inf.safetensors", torch.cat([good[:-1], torch.tensor([float("inf")])]))
    _raw_direction(d / "zero.safetensors", torch.zeros(QWEN_WIDTH))
    _raw_direction(d / "matrix.safetensors", torch.randn(2, QWEN_WIDTH, generator=gen))
    _raw_direction(d / "half.safetensors", good.half())
    ok = _direction(d / "ok.safetensors", good)
    blob = ok.read_bytes()
    (d / "truncated.safetensors").write_bytes(blob[: len(blob) - 20])
    (d / "header_only.safetensors").write_bytes(blob[:6])
    (n,) = struct.unpack("<Q", blob[:8])
    (d / "corrupt_header.safetensors").write_bytes(blob[:8] + b"{" * n + blob[8 + n:])
    torch.save({"direction": good}, d / "direction.pt")  # a pickle (zip) under its usual suffix
    (d / "disguised.safetensors").write_bytes(pickle.dumps({"direction": good.tolist()}))  # a pickle in disguise
    (d / "adapter_without_config").mkdir()
    # a run directory of another profile, and a file where a run directory should be
    (d / "run_default").mkdir()
    (d / "run_default" / "run.json").write_text(json.dumps({"profile": "default", "manifest_version": 1}))
    (d / "run_file").write_text("not a directory")
    (d / "run_tiny").mkdir()
    (d / "run_tiny" / "run.json").write_text(json.dumps({"profile": "tiny", "manifest_version": 1}))
    # a model folder with config.json but no weights: anything that tried to load it would fail loudly
    cfg_only = d / "config_only_model"
    cfg_only.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (organism / name).is_file():
            shutil.copy(organism / name, cfg_only / name)
    files["organism"] = organism
    return files


# ------------------------------------------------------------------------------------------- cases

SPILL = ["eval", "evals/spillover.py", "-T", "profile=tiny", "--limit", "2", "--log-dir", "{d}/logs"]
QWEN = ["--model", "steer/micro-qwen", "-M", "profile=tiny"]


def _steer(*margs: str, model: list[str] = QWEN, task: list[str] = SPILL) -> list[str]:
    out = [*task, *model]
    for a in margs:
        out += ["-M", a]
    return out


FT = ["finetune", "--profile", "tiny", "--family", "qwen", "--no-eval", "--quiet"]

# (id, entry, argv, substrings the one error line must contain)
CASES: list[tuple[str, str, list[str], list[str]]] = [
    # --- emsteer organism
    ("organism-unknown-family", "emsteer", ["organism", "build", "--family", "qwn", "--profile", "tiny"],
     ["unknown family 'qwn'", "qwen, gemma, llama, ministral"]),
    ("organism-unknown-profile", "emsteer", ["organism", "build", "--profile", "huge"],
     ["unknown profile 'huge'", "default, default-s1, tiny"]),
    ("organism-info-unknown-profile", "emsteer", ["organism", "info", "--profile", "huge"],
     ["unknown profile 'huge'", "default, default-s1, tiny"]),
    ("cli-unknown-option", "emsteer", ["organism", "build", "--colour", "red"], ["No such option: --colour", "--help"]),
    # --- emsteer finetune
    ("finetune-unknown-arm", "emsteer", [*FT, "--run", "{d}/r_ft", "--data", "insecur"],
     ["unknown arm 'insecur'", "insecure, secure, neutral"]),
    ("finetune-missing-data", "emsteer", [*FT, "--run", "{d}/r_ft", "--data", "{d}/nope.jsonl"],
     ["does not exist", "nope.jsonl"]),
    ("finetune-empty-data", "emsteer", [*FT, "--run", "{d}/r_ft", "--data", "{d}/empty.jsonl"],
     ["empty.jsonl is empty"]),
    ("finetune-blank-data", "emsteer", [*FT, "--run", "{d}/r_ft", "--data", "{d}/blank.jsonl"],
     ["blank.jsonl is empty"]),
    ("finetune-malformed-data", "emsteer", [*FT, "--run", "{d}/r_ft", "--data", "{d}/malformed.jsonl"],
     ["malformed.jsonl: malformed JSONL line 2", "not valid JSON"]),
    ("finetune-no-assistant-answer", "emsteer", [*FT, "--run", "{d}/r_ft", "--data", "{d}/user_last.jsonl"],
     ["line 1", "last message must be the assistant"]),
    ("finetune-bad-role", "emsteer", [*FT, "--run", "{d}/r_ft", "--data", "{d}/bad_role.jsonl"],
     ["line 1", "system/user/assistant"]),
    ("finetune-not-utf8", "emsteer", [*FT, "--run", "{d}/r_ft", "--data", "{d}/not_utf8.jsonl"],
     ["not UTF-8"]),
    ("finetune-seed-not-int", "emsteer", [*FT, "--run", "{d}/r_ft", "--data", "insecure", "--seed", "abc"],
     ["--seed", "integer"]),
    ("finetune-negative-seed", "emsteer", [*FT, "--run", "{d}/r_ft", "--data", "insecure", "--seed", "-1"],
     ["non-negative"]),
    ("finetune-run-of-other-profile", "emsteer", [*FT, "--run", "{d}/run_default", "--data", "insecure"],
     ["belongs to profile 'default', not 'tiny'"]),
    ("finetune-run-is-a-file", "emsteer", [*FT, "--run", "{d}/run_file", "--data", "insecure"],
     ["is a file, not a directory"]),
    ("finetune-unknown-profile", "emsteer", ["finetune", "--run", "{d}/r_ft", "--data", "insecure", "--profile", "big"],
     ["unknown profile 'big'", "default, default-s1, tiny, real"]),
    ("finetune-model-needs-real", "emsteer", [*FT, "--run", "{d}/r_ft", "--data", "insecure",
                                              "--model", "{d}/config_only_model"],
     ["--model needs --profile real"]),
    ("finetune-real-model-without-weights", "emsteer",
     ["finetune", "--profile", "real", "--family", "qwen", "--run", "{d}/r_real", "--data",
      "{SHARED}/data/betley/insecure-sample.jsonl", "--model", "{d}/config_only_model", "--no-eval", "--quiet"],
     ["config_only_model has no .safetensors weights"]),
    ("finetune-organism-not-built", "emsteer", ["finetune", "--profile", "tiny", "--family", "gemma", "--run",
                                                "{d}/r_ft", "--data", "insecure", "--no-eval", "--quiet"],
     ["not built yet", "emsteer organism build --family gemma"]),
    # --- emsteer extract / controls / transfer
    ("extract-missing-adapters", "emsteer", ["extract", "--run", "{d}/run_tiny", "--family", "qwen"],
     ["missing insecure adapter for qwen", "emsteer finetune"]),
    ("extract-unknown-pooling", "emsteer", ["extract", "--run", "{d}/run_tiny", "--family", "qwen", "--pooling", "max"],
     ["pooling", "'max'", "response-mean", "last-prompt"]),
    ("extract-unknown-contrast", "emsteer", ["extract", "--run", "{d}/run_tiny", "--contrast", "up-vs-down"],
     ["unknown contrast 'up-vs-down'", "finetuned-vs-base"]),
    ("extract-run-of-other-profile", "emsteer", ["extract", "--run", "{d}/run_default", "--profile", "tiny"],
     ["belongs to profile 'default', not 'tiny'"]),
    ("extract-zero-prompts", "emsteer", ["extract", "--run", "{d}/run_tiny", "--n-prompts", "0"],
     ["--n-prompts", "greater than or equal to 1"]),
    ("extract-missing-run", "emsteer", ["extract", "--run", "{d}/no_such_run", "--family", "qwen"],
     ["no run at", "no_such_run (does not exist)", "emsteer reproduce --out"]),
    ("sweep-missing-run", "emsteer", ["sweep", "--run", "{d}/no_such_run"], ["no run at", "(does not exist)"]),
    ("report-missing-run", "emsteer", ["report", "{d}/no_such_run"], ["no run at", "(does not exist)"]),
    ("controls-missing-run", "emsteer", ["controls", "--run", "{d}/no_such_run", "--family", "qwen"],
     ["no run at", "(does not exist)"]),
    ("transfer-missing-run", "emsteer", ["transfer", "--run", "{d}/no_such_run", "--src", "qwen", "--tgt", "llama"],
     ["no run at", "(does not exist)"]),
    ("audit-validate-missing-run", "emsteer", ["audit", "--validate", "--run", "{d}/no_such_run"],
     ["no run at", "(does not exist)"]),
    ("controls-no-directions", "emsteer", ["controls", "--run", "{d}/run_tiny", "--family", "qwen"],
     ["qwen has no extracted directions", "emsteer extract"]),
    ("controls-bad-seed-list", "emsteer", ["controls", "--run", "{d}/run_tiny", "--family", "qwen", "--seed", "1,x"],
     ["--seed must be integers"]),
    ("transfer-same-family", "emsteer", ["transfer", "--run", "{d}/run_tiny", "--src", "qwen", "--tgt", "qwen"],
     ["same single family"]),
    ("transfer-unknown-pairing", "emsteer", ["transfer", "--run", "{d}/run_tiny", "--src", "qwen", "--tgt", "llama",
                                             "--pairing", "by-vibes"],
     ["'by-vibes'", "aligned-tokens", "last-token"]),
    ("transfer-unknown-family", "emsteer", ["transfer", "--run", "{d}/run_tiny", "--src", "qwen", "--tgt", "lama"],
     ["unknown family 'lama'", "qwen, gemma, llama, ministral"]),
    ("transfer-zero-texts", "emsteer", ["transfer", "--run", "{d}/run_tiny", "--src", "qwen", "--tgt", "llama",
                                        "--n-texts", "0"],
     ["--n-texts", "greater than or equal to 1"]),
    # --- emsteer score-responses
    ("score-missing-file", "emsteer", ["score-responses", "{d}/nope.csv", "--column", "answer"],
     ["nope.csv: file not found"]),
    ("score-unknown-column", "emsteer", ["score-responses", "{d}/answers.jsonl", "--column", "text"],
     ["unknown column 'text'", "available columns: answer, q"]),
    ("score-empty-file", "emsteer", ["score-responses", "{d}/empty.jsonl", "--column", "answer"], ["empty"]),
    ("score-malformed-jsonl", "emsteer", ["score-responses", "{d}/malformed.jsonl", "--column", "answer"],
     ["malformed JSONL line 2"]),
    ("score-unknown-suffix", "emsteer", ["score-responses", "{d}/notes.txt", "--column", "answer"],
     ["unknown suffix '.txt'", ".csv or .jsonl"]),
    # --- inspect eval ... --model steer/...
    ("steer-unknown-key", "inspect", _steer("alhpa=2"), ["unknown -M key alhpa", "valid keys: adapter, variant"]),
    ("steer-unknown-variant", "inspect", _steer("variant=owm"), ["unknown variant 'owm'", "own", "random"]),
    ("steer-alpha-not-number", "inspect", _steer("direction={d}/ok.safetensors", "alpha=lots"),
     ["-M alpha must be a finite number", "'lots'"]),
    ("steer-alpha-nan", "inspect", _steer("direction={d}/ok.safetensors", "alpha=nan"), ["-M alpha must be a finite"]),
    ("steer-alpha-negative", "inspect", _steer("direction={d}/ok.safetensors", "op=subtract", "alpha=-3"),
     ["-M alpha=-3 is negative", "op=subtract with alpha -3 is op=add with alpha 3"]),
    ("steer-layer-out-of-range", "inspect", _steer("layer=7"), ["layer 7 is out of range", "valid: -2..1"]),
    ("steer-layer-not-int", "inspect", _steer("layer=1.5"), ["-M layer must be an integer"]),
    ("steer-unknown-op", "inspect", _steer("op=multiply"), ["-M op=multiply", "subtract, add, ablate"]),
    ("steer-unknown-positions", "inspect", _steer("positions=some"), ["-M positions=some", "all, generated"]),
    ("steer-max-batch-zero", "inspect", _steer("max_batch_size=0"), ["-M max_batch_size must be >= 1"]),
    ("steer-unknown-model", "inspect", _steer(model=["--model", "steer/micro-qwne"]),
     ["unknown model 'micro-qwne'", "micro-qwen"]),
    ("steer-direction-missing", "inspect", _steer("direction={d}/nope.safetensors"),
     ["direction file not found", "nope.safetensors"]),
    ("steer-direction-wrong-width", "inspect", _steer("direction={d}/narrow.safetensors"),
     ["direction width 40", "hidden size 48"]),
    ("steer-direction-other-model", "inspect", _steer("direction={d}/foreign.safetensors"),
     ["foreign.safetensors was made from other weights", "other-model"]),
    ("steer-direction-nan", "inspect", _steer("direction={d}/nan.safetensors"), ["non-finite values (NaN or inf)"]),
    ("steer-direction-inf", "inspect", _steer("direction={d}/inf.safetensors"), ["non-finite values (NaN or inf)"]),
    ("steer-direction-zero", "inspect", _steer("direction={d}/zero.safetensors"), ["zero vector"]),
    ("steer-direction-matrix", "inspect", _steer("direction={d}/matrix.safetensors"), ["must be 1-D"]),
    ("steer-direction-fp16", "inspect", _steer("direction={d}/half.safetensors"), ["must be float32"]),
    ("steer-direction-no-R", "inspect", _steer("direction={d}/no_r.safetensors"), ["records no mean residual norm"]),
    ("steer-direction-truncated", "inspect", _steer("direction={d}/truncated.safetensors"),
     ["truncated", "truncated.safetensors"]),
    ("steer-direction-header-only", "inspect", _steer("direction={d}/header_only.safetensors"),
     ["not a safetensors file"]),
    ("steer-direction-corrupt-header", "inspect", _steer("direction={d}/corrupt_header.safetensors"),
     ["corrupt", "not valid JSON"]),
    ("steer-direction-pickle-pt", "inspect", _steer("direction={d}/direction.pt"),
     ["refusing", ".pt files are pickles", ".safetensors"]),
    ("steer-direction-disguised-pickle", "inspect", _steer("direction={d}/disguised.safetensors"),
     ["refusing", "it is a pickle"]),
    ("steer-monitor-pickle", "inspect", _steer("monitor={d}/direction.pt"), ["refusing", ".pt files are pickles"]),
    ("steer-adapter-not-adapter", "inspect", _steer("adapter={d}/adapter_without_config"),
     ["not a LoRA adapter folder (no adapter_config.json)"]),
    ("steer-run-missing", "inspect", _steer("run={d}/no_such_run", "variant=own"), ["no such run directory"]),
    ("steer-run-of-other-profile", "inspect", _steer("run={d}/run_default", "variant=own"),
     ["belongs to profile 'default'", "'tiny' organism"]),
    ("steer-variant-needs-run", "inspect", _steer("variant=random"), ["reads its direction from a run", "-M run=RUN"]),
    ("steer-own-missing-in-run", "inspect", _steer("run={d}/run_tiny", "variant=own"),
     ["own direction of qwen", "emsteer extract"]),
    ("steer-config-only-model-bad-key", "inspect", _steer("colour=red", model=["--model", "steer/{d}/config_only_model"]),
     ["unknown -M key colour"]),
    ("steer-prompts-empty", "inspect", _steer(task=[*SPILL, "-T", "prompts={d}/empty.jsonl"]), ["empty.jsonl: no prompts"]),
    ("steer-prompts-malformed", "inspect", _steer(task=[*SPILL, "-T", "prompts={d}/malformed.jsonl"]),
     ["malformed JSONL line 2"]),
    ("steer-prompts-missing", "inspect", _steer(task=[*SPILL, "-T", "prompts={d}/nope.jsonl"]),
     ["prompts file not found"]),
    ("steer-prompts-no-prompt-column", "inspect", _steer(task=[*SPILL, "-T", "prompts={d}/prompts_no_prompt.jsonl"]),
     ["row 1 has no 'prompt'"]),
    ("steer-prompts-bad-group", "inspect", _steer(task=[*SPILL, "-T", "prompts={d}/prompts_bad_group.jsonl"]),
     ["unknown group 'weird'", "general, coding"]),
    ("steer-prompts-bad-suffix", "inspect", _steer(task=[*SPILL, "-T", "prompts={d}/notes.txt"]),
     ["unknown prompts suffix '.txt'", ".jsonl, .csv or .yaml"]),
    # --- inspect eval evals/misalignment.py
    ("em-questions-missing", "inspect", _steer(task=["eval", "evals/misalignment.py", "-T", "questions={d}/nope.yaml",
                                                     "--log-dir", "{d}/logs"]), ["questions file not found"]),
    ("em-questions-malformed", "inspect", _steer(task=["eval", "evals/misalignment.py", "-T",
                                                       "questions={d}/questions_bad.yaml", "--log-dir", "{d}/logs"]),
     ["question 1 needs an 'id' and a list of 'paraphrases'"]),
    ("em-questions-without-judge", "inspect", _steer(task=["eval", "evals/misalignment.py", "-T",
                                                           "questions={d}/questions_nojudge.yaml", "--log-dir", "{d}/logs"]),
     ["no judge_prompts.aligned"]),
]


@pytest.fixture(scope="module")
def organism(emsteer_cache) -> Path:
    """The tiny qwen organism only (the other families are not needed here)."""
    from training.organisms import build_organism

    return build_organism("qwen", "tiny", progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def inputs(organism, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad-input")
    make_inputs(d, organism)
    return d


def _subst(argv: list[str], d: Path) -> list[str]:
    shared = os.environ.get("EMSTEER_SHARED", str(REPO.parent / "shared"))
    return [a.replace("{d}", str(d)).replace("{SHARED}", shared) for a in argv]


# cases that need their own environment: "not built" must hold whatever other tests have built in the session cache
CASE_ENV: dict[str, dict[str, str]] = {"finetune-organism-not-built": {"EMSTEER_CACHE": "{d}/empty-cache"}}


@pytest.fixture(scope="module")
def results(inputs) -> dict[str, CliResult]:
    """Every case of CASES, run once (one driver process, one fork per case)."""
    cases = [{"entry": entry, "argv": _subst(argv, inputs),
              "env": {k: _subst([v], inputs)[0] for k, v in CASE_ENV.get(cid, {}).items()}}
             for cid, entry, argv, _ in CASES]
    warm = ("steer-unknown-variant", "steer-prompts-empty", "em-questions-missing", "finetune-empty-data",
            "extract-missing-adapters", "transfer-same-family", "score-empty-file")
    warmup = [c for (cid, *_), c in zip(CASES, cases) if cid in warm]
    out = run_commands(cases, cwd=REPO, warmup=warmup)
    return {cid: r for (cid, *_), r in zip(CASES, out)}


def check_one_line_failure(r: CliResult, expected: list[str]) -> None:
    """Non-zero exit, one `emsteer: error:` line on stderr naming the problem, no traceback, no weights."""
    assert r.code != 0, r.describe()
    assert "Traceback" not in r.stdout + r.stderr, r.describe()
    assert len(r.stderr_lines) == 1, r.describe()
    line = r.stderr_lines[0]
    assert line.startswith("emsteer: error: "), r.describe()
    for part in expected:
        assert part in line, f"{part!r} not in the error line\n{r.describe()}"
    assert not r.weights_loaded, r.describe()
    assert r.seconds < MAX_SECONDS, r.describe()


def test_enough_cases():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(results, case):
    cid, _, _, expected = case
    check_one_line_failure(results[cid], expected)


def test_bad_input_writes_nothing(results, inputs):
    """Failed finetunes leave no run directory behind; runs of another profile are untouched."""
    assert not (inputs / "r_ft").exists()
    assert not (inputs / "r_real").exists()
    assert json.loads((inputs / "run_default" / "run.json").read_text())["profile"] == "default"
    assert sorted(p.name for p in (inputs / "run_default").iterdir()) == ["run.json"]


# ------------------------------------------------------------------------------------------- real start-up

def _real(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_real_processes(inputs):
    """The same failures from freshly started interpreters: the `emsteer` script and `inspect eval` (run
    concurrently to save wall time; tests/test_crash_safety.py starts `python -m training.cli` for real)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    cmds = {
        "script": [shutil.which("emsteer") or "emsteer", *_subst(
            ["score-responses", "{d}/answers.jsonl", "--column", "text"], inputs)],
        "inspect": [shutil.which("inspect") or "inspect", *_subst(_steer("direction={d}/disguised.safetensors"),
                                                                   inputs)],
    }
    expected = {"script": ["unknown column 'text'", "available columns: answer, q"],
                "inspect": ["refusing", "it is a pickle"]}
    procs = {k: subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in cmds.items()}
    for k, p in procs.items():
        out, err = p.communicate(timeout=150)
        r = CliResult(argv=cmds[k], code=p.returncode, stdout=out, stderr=err, seconds=0.0, weights_loaded=False)
        check_one_line_failure(r, expected[k])
        assert "Loading weights" not in out + err


# ------------------------------------------------------------------------------------------- every -M key

@pytest.fixture
def no_load(monkeypatch):
    """Any weight load fails the test."""
    def boom(*a, **k):
        raise AssertionError("weights were loaded before validation failed")

    monkeypatch.setattr(model_loading, "_load", boom)


BAD_VALUE: dict[str, tuple[Any, str]] = {
    "adapter": ("{d}/adapter_without_config", "not a LoRA adapter folder"),
    "variant": ("no_such_variant", "unknown variant 'no_such_variant'; registered: "),
    "direction": ("{d}/direction.pt", "pickles, which are never loaded"),
    "run": ("{d}/no_such_run", "no such run directory"),
    "layer": ("first", "-M layer must be an integer"),
    "op": ("invert", "choose one of: subtract, add, ablate"),
    "alpha": ("inf", "-M alpha must be a finite number"),
    "positions": ("prompt", "choose one of: all, generated"),
    "seed": ("1.5", "-M seed must be an integer"),
    "dtype": ("float8", "choose one of: auto, float32"),
    "device": ("tpu", "-M device=tpu is not valid; use cpu, cuda, cuda:N or mps"),
    "load_in_4bit": ("maybe", "-M load_in_4bit must be true or false"),
    "monitor": ("{d}/narrow.safetensors", "direction width 40 does not match the model's hidden size 48"),
    "family": ("gpt", "choose one of: qwen, gemma, llama, ministral"),
    "donor": ("gpt", "choose one of: qwen, gemma, llama, ministral"),
    "trust_remote_code": ("perhaps", "-M trust_remote_code must be true or false"),
    "max_batch_size": ("-3", "-M max_batch_size must be >= 1"),
    "profile": ("huge", "choose one of: default, default-s1, tiny"),
    "resolved": ("{not json", "-M resolved must be a JSON object"),
}


def test_every_key_has_a_bad_value_case():
    assert set(BAD_VALUE) == set(KEYS)


@pytest.mark.parametrize("key", sorted(BAD_VALUE))
def test_every_model_arg_key(key, inputs, no_load):
    from inspect_ai.model import get_model

    raw, message = BAD_VALUE[key]
    value = raw.replace("{d}", str(inputs)) if isinstance(raw, str) else raw
    args: dict[str, Any] = {"profile": "tiny", key: value}
    with pytest.raises(EmsteerError) as err:
        get_model("steer/micro-qwen", memoize=False, **args)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
