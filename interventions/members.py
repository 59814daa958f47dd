"""The models a study run compares ("members"), keyed by the name the run's files use (`RUN/adapters/<member>`,
`RUN/directions/<member>`, `RUN/calibration/<member>.json`): in a micro profile the families' organisms (qwen,
gemma, llama, ministral); in a pretrained profile (`real-cpu`) the fetched pretrained models (smollm2,
gemma3-270m), which need not belong to a registered family. Every stage of a study resolves its models here.
"""

from __future__ import annotations

from interventions.errors import EmsteerError
from interventions.model_ref import ModelRef, organism_ref, resolve_model_ref
from interventions.paths import FAMILIES, PRETRAINED_PROFILES, check_family, check_study_profile, is_pretrained_profile

__all__ = ["check_member", "member_n_layers", "member_preset", "member_ref", "profile_members", "resolve_members"]


def profile_members(profile: str) -> tuple[str, ...]:
    """The members of `profile`, in report order: the families, or the profile's pretrained models."""
    check_study_profile(profile)
    return PRETRAINED_PROFILES.get(profile, FAMILIES)


def check_member(member: str, profile: str) -> str:
    """`member` if it belongs to `profile`, else a one-line error listing the profile's members."""
    if not is_pretrained_profile(profile):
        return check_family(member)
    members = profile_members(profile)
    if member not in members:
        raise EmsteerError(f"{member!r} is not a model of profile {profile} (its models: {', '.join(members)})")
    return member


def resolve_members(spec: str, profile: str) -> list[str]:
    """`all` or comma-separated member names -> the list, each checked against `profile`."""
    if spec == "all":
        return list(profile_members(profile))
    return [check_member(m.strip(), profile) for m in spec.split(",") if m.strip()]


def member_ref(member: str, profile: str) -> ModelRef:
    """The base model of `member`: the built organism of a micro profile (checked whole), or the fetched model of
    a pretrained profile (one-line error naming `emsteer model fetch` when it is not there). Its `family` is the
    member name, the key of the run's files."""
    check_member(member, profile)
    if not is_pretrained_profile(profile):
        return organism_ref(member, profile)
    ref = resolve_model_ref(member)
    ref.family, ref.profile = member, profile
    return ref


def member_preset(member: str, profile: str) -> str:
    """The `steer/` preset of a member: `micro-<family>` in a micro profile, the fetched model's preset otherwise."""
    return check_member(member, profile) if is_pretrained_profile(profile) else f"micro-{check_member(member, profile)}"


def member_n_layers(member: str, profile: str) -> int:
    """Decoder layers of a member's base (from its config.json; no weights read)."""
    return member_ref(member, profile).n_layers
