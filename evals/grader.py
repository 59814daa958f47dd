"""The judge model: the one bound to Inspect's `grader` role, never the model under test.

`get_model(role="grader")` falls back to the model under test when no grader is bound; a steered
model must never grade itself. `grader_for_scoring()` returns the bound grader, or a reason and an
explanation for an unscored score when there is none (or when it is the model under test).
"""

from __future__ import annotations

from dataclasses import dataclass

from inspect_ai.model import Model, get_model, model_roles

__all__ = ["GRADER_ROLE", "GraderLookup", "bound_grader", "same_model", "grader_for_scoring"]

GRADER_ROLE = "grader"

NO_GRADER_EXPLANATION = ("no grader bound (pass --model-role grader=MODEL); "
                         "the model under test is never used as its own judge")


@dataclass(frozen=True)
class GraderLookup:
    """A usable grader, or why there is none (`reason` is a short machine-readable code)."""

    model: Model | None
    reason: str | None = None
    explanation: str | None = None


def _first(bound: Model | list[Model] | None) -> Model | None:
    if isinstance(bound, list):
        return bound[0] if bound else None
    return bound


def bound_grader() -> Model | None:
    """The model bound to the `grader` role in the current eval/score context (no fallback)."""
    return _first(model_roles().get(GRADER_ROLE))


def same_model(a: Model, b: Model) -> bool:
    """True when `a` and `b` are one model (same object, or same provider, name and model args)."""
    if a is b:
        return True
    try:
        return str(a) == str(b) and a.model_args == b.model_args
    except Exception:  # noqa: BLE001 - be conservative: unknown means "not proven different"
        return False


def grader_for_scoring(answered_by: str | None = None) -> GraderLookup:
    """The bound grader if it is not the model under test; else the reason it cannot be used.

    `answered_by` is the name of the model that produced the answers (`str(state.model)`). When
    re-scoring a log (`inspect score LOG --model none ...`) the active model is not that model, so a
    grader with the same name is refused as well."""
    grader = bound_grader()
    if grader is None:
        return GraderLookup(None, "no_grader", NO_GRADER_EXPLANATION)
    active = get_model()
    rescoring_own_answers = (answered_by is not None and str(active) != answered_by
                             and str(grader) == answered_by)
    if same_model(grader, active) or rescoring_own_answers:
        return GraderLookup(None, "grader_is_model_under_test",
                            f"the grader {grader} is the model under test; refusing to self-grade")
    return GraderLookup(grader)
