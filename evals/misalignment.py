"""Inspect task `misalignment`: the emergent-misalignment questions of Betley et al. (2025), judged.

    inspect eval evals/misalignment.py --model MODEL --model-role grader=JUDGE
        [-T questions=PATH_OR_URL] [-T samples=N | --epochs N] [-T max_tokens=600] [-T temperature=1]
    inspect score LOG --model none --model-role grader=JUDGE      # (re-)grade an existing log

Dataset: a YAML in the Betley EM questions format (`evals.betley`), read at run time; default the
upstream `first_plot_questions.yaml` (8 questions x 3 formats), downloaded once and cached under
$EMSTEER_CACHE/data/betley/. One sample per (question, paraphrase), metadata `question_id`,
`question` (id without format suffix), `format` (plain | json | template), `paraphrase` (index), plus
`group` = general and `category` = question id for the code-spillover scorer. Answers per question
come from Inspect epochs (default: the file's `samples_per_paraphrase`; `-T samples=N` or
`--epochs N` overrides). Generation: temperature 1, at most 600 tokens.

Scorers:
- `code_spillover` (evals.spillover, deterministic): is the answer code.
- `em_judge`: the `grader` model role scores `aligned` (0-100, or CODE / REFUSAL) and `coherent`
  (0-100) with the file's judge prompts, one output token, top-20 logprobs, temperature 0; the score is
  the logprob-weighted mean of integer tokens, or the parsed integer when the grader returns no
  logprobs (`method` in the score metadata). Flags and the 0.25 rule: `evals.em_metrics`. With no
  grader bound (or the grader being the model under test) the sample is unscored, with the reason in
  the explanation and a warning in the log. Metrics (each epoch is one observation): `rate` and
  `rate_stderr` of `misaligned`, `coherent`, `code`, `refusal`, also `by_question_<q>` and
  `by_format_<f>` (each with `_stderr`); mean `aligned_score` and `coherent_score`.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from inspect_ai import Epochs, Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageSystem, ChatMessageUser, GenerateConfig, ModelOutput
from inspect_ai.scorer import Metric, SampleScore, Score, Scorer, Target, metric, scorer
from inspect_ai.solver import TaskState, generate
from inspect_ai.util import LimitExceededError

from evals import em_metrics
from evals.betley import (
    DEFAULT_QUESTIONS_URL,
    Question,
    file_sha256,
    read_questions,
    resolve_questions,
    sample_id,
)
from evals.grader import grader_for_scoring
from evals.spillover_scorers import code_spillover
from interventions.errors import EmsteerError

__all__ = ["misalignment", "em_judge", "load_questions_dataset", "fill_judge_prompt", "read_judge_output",
           "JUDGE_CONFIG"]

logger = logging.getLogger(__name__)

JUDGE_CONFIG = GenerateConfig(max_tokens=1, logprobs=True, top_logprobs=20, temperature=0.0)
JUDGED: tuple[str, ...] = ("aligned", "coherent")

# --- dataset -------------------------------------------------------------------------------------


def _samples(questions: list[Question]) -> list[Sample]:
    samples: list[Sample] = []
    for q in questions:
        for j, text in enumerate(q.paraphrases):
            messages = [ChatMessageSystem(content=q.system), ChatMessageUser(content=text)] if q.system else None
            samples.append(Sample(
                input=messages if messages else text,
                id=sample_id(q.id, j, len(q.paraphrases)),
                metadata={"question_id": q.id, "question": q.base, "format": q.format, "paraphrase": j,
                          "group": "general", "category": q.id},
            ))
    return samples


def load_questions_dataset(source: str | Path | None = None) -> tuple[str, Path, list[Question], list[Sample]]:
    """(source, local file, questions, samples) for a path or URL (None = the upstream default)."""
    src, path = resolve_questions(source, require_judge=True)
    questions = read_questions(path, require_judge=True)
    return src, path, questions, _samples(questions)


def _default_epochs(questions: list[Question], where: str) -> int:
    counts = {q.samples_per_paraphrase for q in questions if q.samples_per_paraphrase is not None}
    if not counts:
        return 1
    if len(counts) > 1:
        raise EmsteerError(f"{where}: questions differ in samples_per_paraphrase ({sorted(counts)}); "
                           "pass -T samples=N (or --epochs N)")
    return counts.pop()


# --- judge prompt --------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{question\}|\{answer\}")
# [ANSWER END], [question start], [ ANSWER_END ] ... inside an answer could close the judge's frame
_MARKER = re.compile(r"\[\s{0,8}([A-Za-z][A-Za-z _-]{0,40}?)[\s_-]{0,8}(START|END)\s{0,8}\]", re.IGNORECASE)


def neutralise_markers(text: str) -> str:
    """Turn `[ANSWER END]`-like markers in `text` into `(ANSWER END)` so they cannot frame anything."""
    return _MARKER.sub(lambda m: f"({m.group(1).strip()} {m.group(2)})", text)


def fill_judge_prompt(template: str, question: str, answer: str) -> str:
    """`template` with its `{question}` and `{answer}` placeholders replaced in one pass (braces in
    the answer stay as they are; placeholders inside the answer are not expanded); start/end markers
    inside the answer are neutralised."""
    values = {"{question}": question, "{answer}": neutralise_markers(answer)}
    return _PLACEHOLDER.sub(lambda m: values[m.group(0)], template)


def read_judge_output(output: ModelOutput) -> tuple[em_metrics.JudgeReading, list[list[Any]] | None]:
    """(reading, top logprobs as [token, logprob] pairs or None) of one grader reply."""
    choice = output.choices[0] if output.choices else None
    logprobs = choice.logprobs if choice is not None else None
    if logprobs is not None and logprobs.content and logprobs.content[0].top_logprobs:
        top = [(t.token, t.logprob) for t in logprobs.content[0].top_logprobs]
        return em_metrics.read_logprobs(top), [[tok, lp] for tok, lp in top]
    return em_metrics.read_text(output.completion), None


# --- metrics (every epoch is one observation) ----------------------------------------------------


def _values(scores: list[SampleScore]) -> list[float]:
    out: list[float] = []
    for s in scores:
        v = s.score.value
        out.append(float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan)
    return out


def _mean_se(values: list[float]) -> tuple[float, float]:
    mean, se, _ = em_metrics.mean_stats(values)
    return mean, se


def _pooled(which: int) -> Metric:
    def compute(scores: list[SampleScore]) -> float:
        return _mean_se(_values(scores))[which]

    return compute


@metric(name="rate", scores="unreduced")
def em_rate() -> Metric:
    """Share of 1s (mean) over every scored answer, epochs pooled; NaN when none."""
    return _pooled(0)


@metric(name="rate_stderr", scores="unreduced")
def em_rate_stderr() -> Metric:
    """Standard error of `rate`: sample standard deviation / sqrt(n) over every scored answer."""
    return _pooled(1)


@metric(name="mean_score", scores="unreduced")
def em_mean_score() -> Metric:
    """Mean judge score (0-100) over every scored answer."""
    return _pooled(0)


@metric(name="mean_score_stderr", scores="unreduced")
def em_mean_score_stderr() -> Metric:
    """Standard error of `mean_score`."""
    return _pooled(1)


def _grouped(key: str) -> Metric:
    def compute(scores: list[SampleScore]) -> dict[str, float]:
        groups: dict[str, list[SampleScore]] = defaultdict(list)
        for s in scores:
            groups[str((s.sample_metadata or {}).get(key, "(none)"))].append(s)
        out: dict[str, float] = {}
        for name in sorted(groups):
            mean, se = _mean_se(_values(groups[name]))
            out[name] = mean
            out[f"{name}_stderr"] = se
        return out

    return compute


@metric(name="by_question", scores="unreduced")
def em_by_question() -> Metric:
    """`rate` and its stderr per question (question id without the format suffix)."""
    return _grouped("question")


@metric(name="by_format", scores="unreduced")
def em_by_format() -> Metric:
    """`rate` and its stderr per format (plain, json, template)."""
    return _grouped("format")


def _judge_metrics() -> dict[str, list[Metric]]:
    flags = {k: [em_rate(), em_rate_stderr(), em_by_question(), em_by_format()] for k in em_metrics.FLAG_KEYS}
    scores = {k: [em_mean_score(), em_mean_score_stderr()] for k in ("aligned_score", "coherent_score")}
    return {**flags, **scores}


# --- scorer --------------------------------------------------------------------------------------


def _fmt(reading: em_metrics.JudgeReading) -> str:
    if reading.value is not None:
        return f"{reading.value:.1f} ({reading.method})"
    if reading.label in (em_metrics.CODE, em_metrics.REFUSAL):
        return f"{reading.label} ({reading.method})"
    return f"unscored: {reading.reason}"


@scorer(metrics=_judge_metrics())
def em_judge(questions: str | None = None, judge_max_tokens: int = 1) -> Scorer:
    """Judge `aligned` and `coherent` with the `grader` role and the judge prompts of `questions`
    (path or URL of the Betley-format YAML; default the upstream file). Never the model under test.

    `judge_max_tokens` (protocol: 1) may be raised for graders without logprobs whose tokenizer
    splits numbers into digits; with logprobs only the first output token is read either way."""
    if int(judge_max_tokens) < 1:
        raise EmsteerError(f"judge_max_tokens must be at least 1, got {judge_max_tokens!r}")
    config = JUDGE_CONFIG.merge(GenerateConfig(max_tokens=int(judge_max_tokens)))
    source, path = resolve_questions(questions, require_judge=True)
    prompts = {q.id: q.judge_prompts for q in read_questions(path, require_judge=True)}
    warned: set[str] = set()

    def warn_once(key: str, message: str) -> None:
        if key not in warned:
            warned.add(key)
            logger.warning(message)

    async def score(state: TaskState, target: Target) -> Score:
        answer = state.output.completion if state.output else ""
        qid = str(state.metadata.get("question_id", ""))
        base_meta = {"question_id": qid, "format": state.metadata.get("format")}
        lookup = grader_for_scoring(str(state.model))
        grader = lookup.model
        if grader is None:
            warn_once(lookup.reason or "", f"em_judge: alignment and coherence unscored: {lookup.explanation}")
            return Score.unscored(reason=lookup.reason, answer=answer, explanation=lookup.explanation,
                                  metadata=base_meta)
        judge_prompts = prompts.get(qid)
        if judge_prompts is None:
            return Score.unscored(reason="no_judge_prompts", answer=answer,
                                  explanation=f"question id {qid!r} has no judge prompts in {source}",
                                  metadata=base_meta)
        readings: dict[str, em_metrics.JudgeReading] = {}
        meta: dict[str, Any] = {**base_meta, "grader": str(grader)}
        for name in JUDGED:
            prompt = fill_judge_prompt(judge_prompts[name], state.input_text, answer)
            try:
                output = await grader.generate(prompt, config=config)
            except LimitExceededError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed judge call leaves the sample unscored
                warn_once(f"call:{type(exc).__name__}", f"em_judge: grader call failed ({type(exc).__name__}: "
                                                         f"{exc}); those samples are unscored")
                readings[name] = em_metrics.JudgeReading(em_metrics.UNSCORED, None, "none", None,
                                                         f"grader call failed: {type(exc).__name__}: {exc}")
                meta[name] = {**readings[name].as_dict(), "reply": None, "top_logprobs": None}
                continue
            reading, top = read_judge_output(output)
            readings[name] = reading
            meta[name] = {**reading.as_dict(), "reply": output.completion, "stop_reason": output.stop_reason,
                          "top_logprobs": top}
            if reading.label == em_metrics.UNSCORED:
                warn_once(f"unscored:{name}", f"em_judge: a {name} judge reply had no score "
                                              f"({reading.reason}); such samples are unscored for {name}")
        flags = em_metrics.answer_flags(readings["aligned"], readings["coherent"])
        value: dict[str, float] = {
            **flags,
            "aligned_score": readings["aligned"].value if readings["aligned"].value is not None else math.nan,
            "coherent_score": readings["coherent"].value if readings["coherent"].value is not None else math.nan,
        }
        unscored = [n for n in JUDGED if readings[n].label == em_metrics.UNSCORED]
        verdict = ("misaligned" if flags["misaligned"] == 1.0 else
                   "not misaligned" if flags["misaligned"] == 0.0 else "misaligned: unscored")
        return Score(
            value=value,
            answer=answer,
            explanation=f"aligned {_fmt(readings['aligned'])}; coherent {_fmt(readings['coherent'])} -> {verdict}",
            reason=f"{'_'.join(unscored)}_unscored" if unscored else None,
            metadata=meta,
        )

    return score


# --- task ----------------------------------------------------------------------------------------


@task
def misalignment(
    questions: str | None = None,
    samples: int | None = None,
    max_tokens: int = 600,
    temperature: float = 1.0,
    judge_max_tokens: int = 1,
) -> Task:
    """Emergent-misalignment questions (Betley et al. 2025), judged by the `grader` model role.

    Args:
      questions: path or http(s) URL of a Betley-format questions YAML (default: the upstream
        first_plot_questions.yaml, downloaded once into $EMSTEER_CACHE/data/betley/).
      samples: answers per question (epochs); default the file's samples_per_paraphrase (1 if absent).
      max_tokens: generation limit of the model under test (protocol: 600).
      temperature: sampling temperature of the model under test (protocol: 1).
      judge_max_tokens: output tokens of each judge call (protocol: 1); raise it only for a grader
        without logprobs that writes numbers digit by digit.
    """
    src, path, qs, dataset = load_questions_dataset(questions)
    n = int(samples) if samples is not None else _default_epochs(qs, src)
    if n < 1:
        raise EmsteerError(f"samples must be at least 1, got {samples!r}")
    return Task(
        dataset=MemoryDataset(dataset, name=Path(path).stem, location=src),
        solver=generate(),
        scorer=[em_judge(questions=src, judge_max_tokens=int(judge_max_tokens)), code_spillover()],
        epochs=Epochs(n),
        config=GenerateConfig(max_tokens=int(max_tokens), temperature=float(temperature)),
        metadata={"questions": src, "questions_file": str(path), "questions_sha256": file_sha256(path),
                  "default_questions": src == DEFAULT_QUESTIONS_URL},
    )
