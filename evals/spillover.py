"""Inspect task `spillover`: how often a model answers non-coding prompts with code.

    inspect eval evals/spillover.py --model steer/micro-qwen [-M run=RUN] [-T prompts=FILE]
        [-T max_tokens=96] [-T temperature=0] [-T judge=true --model-role grader=MODEL]

Dataset: the held-out prompts of the profile (`interventions.paths.heldout_prompts_path(profile)`; the profile is
-T profile, else the one the steer/ model's run records, else its organism's, else `default`),
or `prompts=FILE`: JSONL/CSV with a `prompt` column (optional `id`, `group` = general | coding,
`category`, `format`), or a YAML in the Betley EM questions format (every question is non-coding:
group general, category = question id, format plain | json | template from the id suffix).
Sample metadata carries group, category and format.

Scorer `code_spillover` (deterministic, `evals.code_detector.is_code`): value 1 for code, with the
detector's evidence in the score metadata. Metrics: `spillover` (mean over group general) and
`code_on_coding` (mean over group coding), each with a `_stderr`, and both per category.
Scorer `prose_form` (`evals.coherence`): value 1 for well-formed prose; its metric `coherence` is the share
of non-code answers to general prompts that are well-formed prose (steering must not buy lower spillover
with broken text). `-T split=calibration|test` takes one half of the prompts (see `split_samples`).
With `judge=true` a second scorer, `code_judge`, asks the model bound to the `grader` role whether
the answer is code; with no grader bound (or the grader being the model under test) its scores are
unscored, never a grade by the model under test.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from inspect_ai import Epochs, Task, task
from inspect_ai.dataset import MemoryDataset
from inspect_ai.model import GenerateConfig, get_model
from inspect_ai.solver import generate

from evals.spillover_dataset import default_prompts, load_prompts, split_samples
from evals.spillover_scorers import answer_mean, code_judge, code_spillover, planted_misaligned, prose_form
from interventions.errors import EmsteerError

# --- task ----------------------------------------------------------------------------------------


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise EmsteerError(f"expected true or false, got {value!r}")


def steer_plan_under_test() -> Any:
    """The `SteerPlan` of the model under test when it is a `steer/` model (Inspect builds the model before the
    task); None for any other model or outside an eval."""
    from interventions.provider import SteerAPI  # deferred: transformers, ~3 s; only steer/ models have a plan

    try:
        api = get_model().api
    except Exception:  # noqa: BLE001 - no active model (a task built outside an eval): nothing to take
        return None
    return api.plan if isinstance(api, SteerAPI) else None


@task
def spillover(
    profile: str | None = None,
    prompts: str | None = None,
    max_tokens: int = 96,
    temperature: float = 0.0,
    judge: bool = False,
    split: str = "all",
    samples: int = 1,
    planted: bool | None = None,
) -> Task:
    """Code spillover on non-coding prompts (and code rate on coding prompts) of the model under test.

    Args:
      profile: the study profile whose held-out prompts are the default dataset (default: the profile of the
        `steer/` model's run or organism, else `default`).
      prompts: a JSONL/CSV/YAML prompts file instead of the held-out prompts.
      max_tokens: generation limit (96 suits the micro organisms; raise it for real models).
      temperature: sampling temperature (0 = greedy).
      judge: also score with the `grader` model role (unscored when no grader is bound).
      split: all | calibration | test: the half of the prompts to use (alpha is calibrated on one half,
        sweeps report the other; see `split_samples`).
      samples: answers per prompt (Inspect epochs; each draws with its own seed when temperature > 0); rates are
        over all answers, standard errors over prompts.
      planted: also score planted misaligned prose (`evals.planted`); default on for the micro organisms'
        held-out prompts, off for a prompts file.
    """
    plan = steer_plan_under_test()
    profile = profile or (plan.run_profile or plan.profile if plan is not None else None) or "default"
    source = Path(prompts).expanduser() if prompts else default_prompts(profile)
    dataset = split_samples(load_prompts(source), split)
    n = int(samples)
    if n < 1:
        raise EmsteerError(f"samples must be at least 1, got {samples}")
    if n > 1 and not float(temperature) > 0:
        raise EmsteerError(f"samples={n} with temperature {temperature}: greedy answers repeat; set temperature > 0")
    with_planted = (prompts is None) if planted is None else _as_bool(planted)
    scorers = ([code_spillover(), prose_form()] + ([planted_misaligned()] if with_planted else [])
               + ([code_judge()] if _as_bool(judge) else []))
    return Task(
        dataset=MemoryDataset(dataset, name=source.stem, location=str(source)),
        solver=generate(),
        scorer=scorers,
        config=GenerateConfig(max_tokens=int(max_tokens), temperature=float(temperature)),
        epochs=Epochs(n, answer_mean()) if n > 1 else None,
        metadata={"prompts": str(source), "profile": profile, "split": split, "samples": n,
                  "temperature": float(temperature), **({"steer": plan.header()} if plan is not None else {})},
        display_name=f"spillover: {plan.label()}" if plan is not None else None,
        tags=plan.tags() if plan is not None else None,
    )
