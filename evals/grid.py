"""Sweep grids: a TOML file in `configs/grids/` that names the cells of a study, validated before anything runs.

    [grid]
    families = ["qwen", "gemma", "llama", "ministral"]   # or "all"
    seeds = [0, 1, 2]            # adapter seeds (RUN/adapters/<family>/<arm>/seed_<s>); also the control seeds
    baselines = ["base", "insecure", "secure"]          # unsteered models
    variants = ["own", "secure_control", "random", "orthogonal", "wrong_layer"]  # on the insecure model
    alpha = "calibrated"         # or a number (units of the layer's mean residual norm R)
    op = "subtract"
    layer = -1
    monitor = true               # unsteered insecure cells record each answer's projection on the own direction

    [dose]                       # dose-response: variants at fixed alphas (seed `seeds[0]`)
    variants = ["own", "random"]
    alphas = [0.5, 1.0, 2.0, 4.0]

    [transfer]                   # donor -> receiver cells on the receiver's insecure model (seed `seeds[0]`)
    pairs = "all"                # or ["qwen->llama", ...]
    variants = ["transferred", "transferred_random"]
    random_draws = 2             # transferred_random cells per pair (RUN/transfer/<pair>/random_<k>)
    monitor = true               # one unsteered cell per pair monitored with the transferred direction

    [task]                       # evals/spillover.py arguments
    split = "test"
    max_tokens = 64

Every cell is one Inspect task (one log). `expand_cells` turns a grid into cells; a cell's `model_args` are the
`steer/` provider's `-M` keys, so a cell can be re-run by hand with `inspect eval evals/spillover.py`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interventions.errors import EmsteerError
from interventions.paths import FAMILIES, configs_dir, run_keys
from interventions.registry import variant_names, variant_traits, variants_with

__all__ = ["Grid", "Cell", "load_grid", "parse_grid", "expand_cells", "grid_path", "BASELINES", "grid_names"]

BASELINES: tuple[str, ...] = ("base", "insecure", "secure")
_SECTIONS: dict[str, tuple[str, ...]] = {
    "grid": ("families", "seeds", "baselines", "variants", "alpha", "op", "layer", "description", "monitor"),
    "dose": ("variants", "alphas"),
    "transfer": ("pairs", "variants", "random_draws", "monitor"),
    "task": ("split", "max_tokens", "temperature", "samples", "prompts", "planted"),
}
_OPS = ("subtract", "add", "ablate")


@dataclass(frozen=True)
class Cell:
    """One sweep cell: a model (family + adapter arm/seed) with one intervention, on the spillover task."""

    name: str
    family: str
    kind: str                    # baseline | variant | dose | transfer
    arm: str | None              # adapter arm (None = base model)
    seed: int
    variant: str                 # none for baselines
    alpha: float | str | None    # "calibrated" until resolved against RUN/calibration
    op: str
    layer: int
    donor: str | None = None
    control_seed: int | None = None   # seed of a control direction (default: the adapter seed)
    monitor: str | None = None        # own | transferred: record each answer's projection on that direction

    def label(self) -> dict[str, Any]:
        """The cell's identity as plain JSON (stored in the task metadata of its log)."""
        return {"cell": self.name, "family": self.family, "kind": self.kind, "arm": self.arm, "seed": self.seed,
                "variant": self.variant, "alpha": self.alpha, "op": self.op, "layer": self.layer,
                "donor": self.donor, "control_seed": self.seed if self.control_seed is None else self.control_seed,
                "monitor": self.monitor}


@dataclass(frozen=True)
class Grid:
    """A validated grid."""

    name: str
    families: tuple[str, ...]
    seeds: tuple[int, ...]
    baselines: tuple[str, ...]
    variants: tuple[str, ...]
    alpha: float | str
    op: str
    layer: int
    dose_variants: tuple[str, ...] = ()
    dose_alphas: tuple[float, ...] = ()
    transfer_pairs: tuple[tuple[str, str], ...] = ()
    transfer_variants: tuple[str, ...] = ()
    transfer_random_draws: int = 1
    monitor: bool = False            # unsteered insecure cells record projections on the own direction
    transfer_monitor: bool = False   # plus one unsteered cell per pair monitored with the transferred direction
    secure_seeds: tuple[int, ...] | None = None  # seeds with a secure adapter (None: every seed)
    task: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def grids_dir() -> Path:
    """`configs/grids/`: the grids shipped with the project."""
    return configs_dir() / "grids"


def grid_names() -> list[str]:
    """Names of the shipped grids (file stems)."""
    return sorted(p.stem for p in grids_dir().glob("*.toml"))


def grid_path(name_or_path: str | Path) -> Path:
    """A grid name (`paper`) or a TOML path; one-line error listing the shipped grids when neither exists."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        return p
    shipped = grids_dir() / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    raise EmsteerError(f"grid {str(name_or_path)!r} not found; give a .toml path or one of: {', '.join(grid_names())}")


def load_grid(name_or_path: str | Path) -> Grid:
    """Read and validate a grid TOML."""
    path = grid_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise EmsteerError(f"grid {path}: not valid TOML ({err})") from None
    return parse_grid(data, name=path.stem, source=str(path))


def _families(value: Any, where: str) -> tuple[str, ...]:
    if value == "all":
        return FAMILIES
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise EmsteerError(f"{where} must be \"all\" or a non-empty list of family names")
    bad = [v for v in value if v not in run_keys()]
    if bad:
        raise EmsteerError(f"{where}: unknown family {bad[0]!r}; choose from: {', '.join(run_keys())}")
    return tuple(dict.fromkeys(value))


def _names(value: Any, where: str, valid: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EmsteerError(f"{where} must be a list of names")
    bad = [v for v in value if v not in valid]
    if bad:
        raise EmsteerError(f"{where}: unknown name {bad[0]!r}; choose from: {', '.join(valid)}")
    return tuple(dict.fromkeys(value))


def _number(value: Any, where: str, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and not value > 0):
        raise EmsteerError(f"{where} must be a {'positive ' if positive else ''}number, got {value!r}")
    return float(value)


def _pairs(value: Any, families: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    if value == "all":
        return tuple((a, b) for a in families for b in families if a != b)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EmsteerError('[transfer] pairs must be "all" or a list like ["qwen->llama"]')
    out = []
    for v in value:
        donor, sep, receiver = v.partition("->")
        donor, receiver = donor.strip(), receiver.strip()
        if not sep or donor not in run_keys() or receiver not in run_keys() or donor == receiver:
            raise EmsteerError(f"[transfer] pairs: {v!r} is not 'donor->receiver' with two different families "
                               f"from: {', '.join(run_keys())}")
        out.append((donor, receiver))
    return tuple(dict.fromkeys(out))


def parse_grid(data: dict[str, Any], *, name: str = "grid", source: str = "") -> Grid:
    """Validate a parsed grid: unknown sections or keys, families, variants, alphas, pairs; one line per problem."""
    for section, body in data.items():
        if section not in _SECTIONS:
            raise EmsteerError(f"grid {name}: unknown section [{section}]; valid sections: {', '.join(_SECTIONS)}")
        if not isinstance(body, dict):
            raise EmsteerError(f"grid {name}: [{section}] must be a table")
        for key in body:
            if key not in _SECTIONS[section]:
                raise EmsteerError(f"grid {name}: unknown key {key!r} in [{section}]; valid keys: "
                                   f"{', '.join(_SECTIONS[section])}")
    g = data.get("grid")
    if not isinstance(g, dict):
        raise EmsteerError(f"grid {name}: missing the [grid] section")
    known_variants = [v for v in variant_names() if v != "none"]
    transfer_known = variants_with(transfer=True)  # donor -> receiver variants: [transfer] cells only
    within_known = [v for v in known_variants if v not in transfer_known]  # [grid] and [dose] cells
    families = _families(g.get("families", "all"), "[grid] families")
    seeds = g.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise EmsteerError(f"grid {name}: [grid] seeds must be a non-empty list of non-negative integers")
    baselines = _names(g.get("baselines", list(BASELINES)), "[grid] baselines", BASELINES)
    variants = _names(g.get("variants", []), "[grid] variants", within_known)
    alpha = g.get("alpha", "calibrated")
    if alpha != "calibrated":
        alpha = _number(alpha, "[grid] alpha")
    op = g.get("op", "subtract")
    if op not in _OPS:
        raise EmsteerError(f"grid {name}: [grid] op {op!r} is not one of: {', '.join(_OPS)}")
    layer = g.get("layer", -1)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise EmsteerError(f"grid {name}: [grid] layer must be an integer (negative counts from the end)")
    dose = data.get("dose", {})
    dose_variants = _names(dose.get("variants", []), "[dose] variants", within_known)
    dose_alphas = tuple(_number(a, "[dose] alphas") for a in dose.get("alphas", []))
    if bool(dose_variants) != bool(dose_alphas):
        raise EmsteerError(f"grid {name}: [dose] needs both variants and alphas")
    tr = data.get("transfer", {})
    pairs = _pairs(tr.get("pairs", []), families)
    pairs = tuple((a, b) for a, b in pairs if a in families and b in families)
    transfer_variants = _names(tr.get("variants", transfer_known if pairs else []), "[transfer] variants",
                               transfer_known)
    draws = tr.get("random_draws", 1)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise EmsteerError(f"grid {name}: [transfer] random_draws must be a positive integer")
    for where, flag in (("[grid] monitor", g.get("monitor", False)), ("[transfer] monitor", tr.get("monitor", False))):
        if not isinstance(flag, bool):
            raise EmsteerError(f"grid {name}: {where} must be true or false")
    task = dict(data.get("task", {}))
    if "max_tokens" in task and (isinstance(task["max_tokens"], bool) or not isinstance(task["max_tokens"], int)
                                 or task["max_tokens"] < 1):
        raise EmsteerError(f"grid {name}: [task] max_tokens must be a positive integer")
    if "samples" in task and (isinstance(task["samples"], bool) or not isinstance(task["samples"], int)
                              or task["samples"] < 1):
        raise EmsteerError(f"grid {name}: [task] samples must be a positive integer")
    if "temperature" in task and (isinstance(task["temperature"], bool)
                                  or not isinstance(task["temperature"], (int, float)) or task["temperature"] < 0):
        raise EmsteerError(f"grid {name}: [task] temperature must be a number >= 0")
    if task.get("samples", 1) > 1 and not task.get("temperature", 0) > 0:
        raise EmsteerError(f"grid {name}: [task] samples > 1 needs temperature > 0 (greedy answers repeat)")
    if "planted" in task and not isinstance(task["planted"], bool):
        raise EmsteerError(f"grid {name}: [task] planted must be true or false")
    if "split" in task and task["split"] not in ("all", "calibration", "test"):
        raise EmsteerError(f"grid {name}: [task] split must be one of: all, calibration, test")
    return Grid(name=name, families=families, seeds=tuple(seeds), baselines=baselines, variants=variants,
                alpha=alpha, op=op, layer=layer, dose_variants=dose_variants, dose_alphas=dose_alphas,
                transfer_pairs=pairs, transfer_variants=transfer_variants, transfer_random_draws=draws,
                monitor=bool(g.get("monitor", False)), transfer_monitor=bool(tr.get("monitor", False)), task=task, source=source)


def _alpha_tag(alpha: float | str | None) -> str:
    if alpha is None:
        return "-"
    return alpha if isinstance(alpha, str) else f"{alpha:g}"


def expand_cells(grid: Grid, families: tuple[str, ...] | None = None) -> list[Cell]:
    """Every cell of `grid` (optionally only some families), in a stable order, with unique names."""
    fams = tuple(f for f in grid.families if families is None or f in families)
    cells: list[Cell] = []
    first = grid.seeds[0]

    def add(family: str, kind: str, arm: str | None, seed: int, variant: str, alpha: float | str | None,
            donor: str | None = None, control_seed: int | None = None, monitor: str | None = None) -> None:
        tag = f"{family}.{kind}.{variant}" + (f".from-{donor}" if donor else "") + (f".monitor-{monitor}" if monitor else "")
        name = f"{tag}.{arm or 'base'}.s{seed}.a{_alpha_tag(alpha)}" + (f".k{control_seed}" if control_seed is not None else "")
        cells.append(Cell(name=name, family=family, kind=kind, arm=arm, seed=seed, variant=variant, alpha=alpha,
                          op=grid.op, layer=grid.layer, donor=donor, control_seed=control_seed, monitor=monitor))

    for fam in fams:
        if "base" in grid.baselines:
            add(fam, "baseline", None, first, "none", None)
        for seed in grid.seeds:
            for arm in ("insecure", "secure"):
                if arm == "secure" and grid.secure_seeds is not None and seed not in grid.secure_seeds:
                    continue
                if arm in grid.baselines:
                    add(fam, "baseline", arm, seed, "none", None,
                        monitor="own" if grid.monitor and arm == "insecure" else None)
            for variant in grid.variants:
                add(fam, "variant", "insecure", seed, variant, grid.alpha)
        for variant in grid.dose_variants:
            for alpha in grid.dose_alphas:
                add(fam, "dose", "insecure", first, variant, alpha)
    for donor, receiver in grid.transfer_pairs:
        if receiver in fams and donor in grid.families:
            for variant in grid.transfer_variants:
                if variant_traits(variant).repeated_draws:
                    for k in range(grid.transfer_random_draws):
                        add(receiver, "transfer", "insecure", first, variant, grid.alpha, donor=donor, control_seed=k)
                else:
                    add(receiver, "transfer", "insecure", first, variant, grid.alpha, donor=donor)
            if grid.transfer_monitor:
                add(receiver, "monitor", "insecure", first, "none", None, donor=donor, monitor="transferred")
    return cells
