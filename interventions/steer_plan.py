"""Resolve the `steer` provider's `-M` keys into a `SteerPlan`, before any weights load.

`resolve_plan(model, model_args)` parses the keys (`interventions.steer_args`: unknown key, bad type, bad
choice), resolves the model (preset, local folder or hub id), reads its config.json (AutoConfig, no weights)
for the layer range and the residual width, then resolves the device, the adapter, the direction (variant or
file) and the monitor direction, checking widths and layers against that config. Every problem is one
`EmsteerError` line naming it and the valid choices. Nothing here loads model weights; direction files and
the adapter/model files are read to hash them.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interventions.alpha_calibration import read_calibrated_alpha
from interventions.directions import Direction, load_direction
from interventions.errors import EmsteerError
from interventions.families import family_for_model_type
from interventions.hooks import Intervention
from interventions.layers import resolve_layer
from interventions.model_loading import LoadKey
from interventions.model_ref import (
    ConfigInfo,
    ModelRef,
    auto_class_for,
    check_adapter,
    default_device,
    read_config,
    resolve_model_ref,
)
from interventions.paths import FAMILIES, PROFILES, run_keys
from interventions.presets import Preset
from interventions.registry import VariantContext, get_variant, variant_traits, variants_with
from interventions.run_layout import (
    adapter_dir,
    calibration_path,
    finetune_command,
    run_manifest_path,
)
from interventions.steer_args import DEFAULT_MAX_BATCH, parse_model_args
from interventions.weights_hash import folder_hashes

__all__ = ["SteerPlan", "check_pinned", "recorded_run_profile", "resolve_plan"]


# ------------------------------------------------------------------------------------------- the plan

@dataclass
class SteerPlan:
    """Everything the provider needs, resolved and validated (no weights loaded)."""

    model: str
    preset: Preset | None
    family: str | None
    profile: str | None
    load_key: LoadKey
    config: ConfigInfo
    layer: int
    variant: str
    direction: Direction | None
    intervention: Intervention | None
    alpha_source: str | None
    adapter_dir: Path | None
    adapter_files: dict[str, str]
    monitor: Direction | None
    monitor_layer: int | None
    seed: int
    max_batch_size: int
    model_files: dict[str, str]
    run: Path | None = None
    donor: str | None = None
    weights_sha256: str | None = None  # weights_hash.weights_sha256 of the model folder (None: unknown)
    run_profile: str | None = None  # the profile RUN/run.json records (tasks default to its prompts)

    @property
    def adapter_name(self) -> str | None:
        """The name the adapter is loaded under in the shared model (its weights hash, shortened)."""
        if self.adapter_dir is None:
            return None
        weights = [h for p, h in self.adapter_files.items() if p.endswith(".safetensors")]
        return "a_" + (weights[0] if weights else next(iter(self.adapter_files.values())))[:16]

    def sha256(self, weights_files: dict[str, str] | None = None) -> dict[str, str]:
        """{path: sha256} of every file used: model folder, adapter, direction sources, monitor sources."""
        out = dict(weights_files if weights_files is not None else self.model_files)
        out.update(self.adapter_files)
        for d in (self.direction, self.monitor):
            if d is not None:
                out.update(d.sources)
        return dict(sorted(out.items()))

    def intervention_record(self) -> dict[str, Any] | None:
        """The full intervention: Intervention.describe() plus variant, files, hashes and direction metadata."""
        if self.intervention is None or self.direction is None:
            return None
        rec = self.intervention.describe()
        rec.update(variant=self.variant, alpha_source=self.alpha_source, run=str(self.run) if self.run else None,
                   donor=self.donor, direction_sources=dict(self.direction.sources),
                   direction_sha256=next(iter(self.direction.sources.values()), None),
                   direction_metadata=dict(self.direction.metadata))
        return rec

    def record(self, weights_files: dict[str, str] | None = None, weights_sha256: str | None = None) -> dict[str, Any]:
        """JSON-able description of this plan (recorded in every output's metadata)."""
        files = weights_files if weights_files is not None else self.model_files
        if weights_sha256 is None and files:
            weights_sha256 = self.weights_sha256
        monitor = None
        if self.monitor is not None:
            monitor = {"layer": self.monitor_layer, "sources": dict(self.monitor.sources),
                       "sha256": next(iter(self.monitor.sources.values()), None),
                       "direction_metadata": dict(self.monitor.metadata)}
        return {
            "model": self.model,
            "preset": self.preset.name if self.preset else None,
            "family": self.family,
            "profile": self.profile,
            "path": self.load_key.model,
            "auto_class": self.load_key.auto_class,
            "dtype": self.load_key.dtype,
            "device": self.load_key.device,
            "load_in_4bit": self.load_key.load_in_4bit,
            "n_layers": self.config.n_layers,
            "d_model": self.config.d_model,
            "weights_sha256": weights_sha256,
            "adapter": {"path": str(self.adapter_dir), "sha256": dict(self.adapter_files)} if self.adapter_dir else None,
            "variant": self.variant,
            "layer": self.layer,
            "intervention": self.intervention_record(),
            "monitor": monitor,
            "seed": self.seed,
            "sha256": self.sha256(files),
        }

    def header(self) -> dict[str, Any]:
        """The intervention at a glance, as flat values (what an eval log's metadata shows at the top): model,
        profile, run, adapter, variant, op, layer, alpha and where it came from, R, direction and weights hashes."""
        iv = self.intervention
        adapter_weights = [h for p, h in self.adapter_files.items() if p.endswith(".safetensors")]
        return {
            "model": self.model, "profile": self.run_profile or self.profile,
            "run": str(self.run) if self.run else None,
            "adapter": str(self.adapter_dir) if self.adapter_dir else None,
            "adapter_sha256": adapter_weights[0] if adapter_weights else None,
            "variant": self.variant, "op": iv.op if iv else None, "layer": self.layer,
            "alpha": iv.alpha if iv else None, "alpha_source": self.alpha_source, "R": iv.R if iv else None,
            "donor": self.donor,
            "direction_sha256": next(iter(self.direction.sources.values()), None) if self.direction else None,
            "weights_sha256": self.weights_sha256,
        }

    def label(self) -> str:
        """A short name telling runs apart in a log list: variant, op, alpha and layer, and the adapter's arm."""
        arm = self.adapter_dir.parent.name if self.adapter_dir is not None else None
        model = f"{self.model}" + (f" + {arm} adapter" if arm else "")
        if self.intervention is None:
            return f"{model}, unsteered"
        iv = self.intervention
        return f"{model}, {self.variant} {iv.op} alpha {iv.alpha:g} at layer {self.layer}"

    def tags(self) -> list[str]:
        """Log-list tags: variant, op and alpha, layer, adapter arm."""
        iv = self.intervention
        out = [f"variant:{self.variant}"]
        if iv is not None:
            out += [f"{iv.op}:{iv.alpha:g}", f"layer:{self.layer}"]
        if self.adapter_dir is not None:
            out.append(f"adapter:{self.adapter_dir.parent.name}")
        return out

    def pin(self) -> dict[str, Any]:
        """What `resolved_model_args` puts in model_args (and a later run checks): hashes + intervention."""
        return json.loads(json.dumps({"sha256": self.sha256(), "intervention": self.intervention_record(),
                                      "adapter": str(self.adapter_dir) if self.adapter_dir else None},
                                     default=str, sort_keys=True))  # sorted: eval_set hashes model_args in order


# ------------------------------------------------------------------------------------------- resolution

def recorded_run_profile(run: Path) -> str | None:
    """The profile RUN/run.json records (None when the run has no manifest); one line when it is unreadable."""
    manifest = run_manifest_path(run)
    if not manifest.is_file():
        return None
    try:
        recorded = json.loads(manifest.read_text()).get("profile")
    except (OSError, json.JSONDecodeError, AttributeError):
        raise EmsteerError(f"run manifest {manifest} is unreadable; move the run directory aside") from None
    return recorded if isinstance(recorded, str) else None


def _resolve_model(name: str, args: dict[str, Any]) -> ModelRef:
    """The model named after `steer/` (preset, local folder or hub id), resolved by `model_ref`. A micro preset
    takes its organism profile from -M profile, else from the run it is given (-M run=RUN records it), else
    `default`."""
    profile = args.get("profile")
    if "run" in args:
        run = Path(args["run"]).expanduser()
        if profile is not None:
            _check_run_profile(run, profile)  # a conflict is named before any organism is looked up
        else:
            recorded = recorded_run_profile(run) if run.is_dir() else None
            profile = recorded if recorded in PROFILES else None
    ref = resolve_model_ref(name, profile or "default")
    if "profile" in args and ref.kind != "micro":
        raise EmsteerError(f"-M profile applies to micro-* presets only, not to {name!r}")
    return ref


def _family(args: dict[str, Any], preset: Preset | None, path: str, config: ConfigInfo) -> str | None:
    if "family" in args:
        return args["family"]
    if preset is not None and preset.fetched:
        return preset.fetched  # a fetched model's run files are keyed by its name (interventions.members)
    if preset is not None and preset.family is not None:
        return preset.family
    info = Path(path) / "organism.json"
    if info.is_file():
        try:
            fam = json.loads(info.read_text()).get("family")
            if fam in FAMILIES:
                return fam
        except (OSError, json.JSONDecodeError):
            pass
    spec = family_for_model_type(config.model_type, config.text_model_type)  # local folders, hub ids
    return spec.name if spec is not None else None


def _device(args: dict[str, Any]) -> str:
    device = args.get("device", "auto")
    if device == "auto":
        device = default_device()
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise EmsteerError(f"-M device={device} is not valid; use cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EmsteerError(f"-M device={device} but CUDA is not available on this machine; use device=cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise EmsteerError(f"-M device={device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device == "mps" and not torch.backends.mps.is_available():
        raise EmsteerError("-M device=mps but MPS is not available on this machine; use device=cpu")
    return device


def _check_4bit(args: dict[str, Any], device: str) -> bool:
    if not args.get("load_in_4bit", False):
        return False
    if not torch.cuda.is_available() or not device.startswith("cuda"):
        raise EmsteerError("-M load_in_4bit=true needs a CUDA device (bitsandbytes NF4); this run has "
                           f"device={device} and CUDA is {'available' if torch.cuda.is_available() else 'not available'}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise EmsteerError("-M load_in_4bit=true needs bitsandbytes: pip install 'emsteer[cuda]'")
    return True


def _adapter(args: dict[str, Any], preset: Preset | None, family: str | None, run: Path | None,
             seed: int) -> Path | None:
    if "adapter" in args:
        folder = Path(args["adapter"]).expanduser()
        return check_adapter(folder, f"-M adapter={folder}")
    if preset is None or not preset.steered:
        return None
    arm = str(preset.steered_defaults.get("adapter_arm", "insecure"))
    if family is None:
        raise EmsteerError(f"preset {preset.name} belongs to no registered family, so the run's files cannot be "
                           f"named; pass -M family=NAME")
    assert run is not None
    folder = adapter_dir(run, family, arm, seed)
    if not (folder / "adapter_config.json").is_file():
        raise EmsteerError(f"preset {preset.name} needs the {arm} adapter {folder} (missing); make it with "
                           f"`{finetune_command(run, family, arm, seed)}`")
    return folder.resolve()


def _direction(args: dict[str, Any], variant: str, family: str | None, run: Path | None, layer: int,
               config: ConfigInfo, seed: int) -> Direction | None:
    """The direction to steer with: the -M direction file, or the variant's (None = no intervention)."""
    if variant != "file":
        get_variant(variant)  # unknown variant -> error listing the registered ones
    elif "direction" not in args:
        raise EmsteerError("variant 'file' means a -M direction=FILE; pass one")
    if "direction" in args:
        if variant != "file" and not variant_traits(variant).file_backed:
            raise EmsteerError(f"-M direction replaces the file of a file-backed variant "
                               f"({', '.join(variants_with(file_backed=True))}) "
                               f"or stands alone; variant {variant!r} cannot take it")
        return load_direction(Path(args["direction"]).expanduser(), expected_width=config.d_model)
    if variant == "none":
        return None
    if run is None:
        raise EmsteerError(f"variant {variant!r} reads its direction from a run: pass -M run=RUN "
                           f"(or -M direction=FILE)")
    if family is None:
        raise EmsteerError(f"variant {variant!r} needs the model's family: pass -M family=F "
                           f"(one of: {', '.join(run_keys())})")
    if variant_traits(variant).transfer and "donor" not in args:
        raise EmsteerError(f"variant {variant!r} needs -M donor=F (one of: "
                           f"{', '.join(f for f in run_keys() if f != family)})")
    ctx = VariantContext(family=family, run=run, layer=layer, n_layers=config.n_layers, d_model=config.d_model,
                         seed=seed, donor=args.get("donor"))
    direction = get_variant(variant)(ctx)
    if direction is not None and direction.width != config.d_model:
        raise EmsteerError(f"variant {variant!r} gave a direction of width {direction.width}; the model's hidden "
                           f"size is {config.d_model}")
    return direction


def _monitor(args: dict[str, Any], config: ConfigInfo, layer: int) -> tuple[Direction | None, int | None]:
    if "monitor" not in args:
        return None, None
    direction = load_direction(Path(args["monitor"]).expanduser(), expected_width=config.d_model)
    recorded = direction.layer
    if recorded is None:
        return direction, layer
    try:
        return direction, resolve_layer(config.n_layers, recorded)
    except EmsteerError:
        raise EmsteerError(f"monitor file {args['monitor']} records layer {recorded}, out of range for "
                           f"{config.n_layers} decoder layers") from None


def _check_run_profile(run: Path, profile: str | None) -> None:
    """A run directory records its profile (RUN/run.json); a micro preset of another profile may not use it."""
    if not run.exists():
        raise EmsteerError(f"-M run={run}: no such run directory")
    if not run.is_dir():
        raise EmsteerError(f"-M run={run} is a file, not a run directory")
    recorded = recorded_run_profile(run)
    if profile is None:
        return
    if recorded is not None and recorded != profile:
        raise EmsteerError(f"-M run={run} belongs to profile {recorded!r}, but the model is the {profile!r} "
                           f"organism; drop -M profile (a run's own profile is used) or pass another run")


def _check_same_weights(direction: Direction | None, what: str, model: str, model_sha: str | None) -> None:
    """A direction that records the weights it was made from must come from this model's weights."""
    if direction is None or model_sha is None:
        return
    recorded = direction.metadata.get("weights_sha256")
    if recorded and recorded != model_sha:
        source = next(iter(direction.sources), "?")
        made_for = direction.metadata.get("model_id") or "another model"
        raise EmsteerError(f"{what} {source} was made from other weights ({made_for}, weights sha256 "
                           f"{recorded[:12]}...), not from {model} (weights sha256 {model_sha[:12]}...); "
                           f"extract it from this model")


def resolve_plan(model: str, model_args: dict[str, Any]) -> SteerPlan:
    """Validate `model_args` for `steer/<model>` and resolve everything short of loading weights."""
    args = parse_model_args(model_args)
    ref = _resolve_model(model, args)
    preset, path, profile, auto_class = ref.preset, ref.path, ref.profile, ref.auto_class
    steered = dict(preset.steered_defaults) if preset is not None and preset.steered else {}
    trust = bool(args.get("trust_remote_code", False))
    device = _device(args)
    in_4bit = _check_4bit(args, device)
    config = read_config(path, trust_remote_code=trust)
    family = _family(args, preset, path, config)
    seed = int(args.get("seed", 0))
    run = Path(args["run"]).expanduser().resolve() if "run" in args else None
    if run is not None:
        _check_run_profile(run, profile)
    if steered and run is None:
        raise EmsteerError(f"preset {model} needs -M run=RUN: the experiment folder with the insecure adapter, "
                           f"the own direction and the calibrated alpha")
    layer = resolve_layer(config.n_layers, int(args.get("layer", steered.get("layer", -1))))
    variant = args.get("variant", steered.get("variant", "file" if "direction" in args else "none"))
    if variant == "none" and "direction" in args:
        raise EmsteerError("-M variant=none and -M direction=FILE contradict each other; drop one")
    adapter = _adapter(args, preset, family, run, seed)
    direction = _direction(args, variant, family, run, layer, config, seed)
    op = args.get("op", steered.get("op", "subtract"))
    intervention, alpha_source = None, None
    if direction is not None:
        if "alpha" in args:
            alpha, alpha_source = args["alpha"], "-M alpha"
        elif steered.get("alpha") == "calibrated":
            assert family is not None and run is not None
            alpha = read_calibrated_alpha(run, family, needed_by=f"preset {model}", instead="pass -M alpha=A")
            alpha_source = str(calibration_path(run, family))
        else:
            alpha, alpha_source = 1.0, "default"
        R = direction.mean_residual_norm
        if op != "ablate" and (R is None or not R > 0):
            raise EmsteerError(f"direction {next(iter(direction.sources), '?')} records no mean residual norm R "
                               f"(metadata key mean_residual_norm), so alpha (in units of R) cannot be applied")
        intervention = Intervention(op=op, direction=direction.vector, layers=[layer], alpha=alpha,
                                    R=R if R and R > 0 else 1.0, positions=args.get("positions", "all"))
    monitor, monitor_layer = _monitor(args, config, layer)
    model_files = folder_hashes(ref.folder) if ref.folder is not None else {}
    try:
        model_sha = ref.weights_sha256 if model_files else None
    except EmsteerError:  # no .safetensors weights: nothing to compare
        model_sha = None
    _check_same_weights(direction, "direction", model, model_sha)
    _check_same_weights(monitor, "monitor direction", model, model_sha)
    plan = SteerPlan(
        model=model, preset=preset, family=family, profile=profile,
        load_key=LoadKey(model=path, auto_class=auto_class or auto_class_for(config), dtype=args.get("dtype", "auto"),
                         device=device, load_in_4bit=in_4bit, trust_remote_code=trust),
        config=config, layer=layer, variant=variant, direction=direction, intervention=intervention,
        alpha_source=alpha_source, adapter_dir=adapter,
        adapter_files=folder_hashes(adapter) if adapter is not None else {},
        monitor=monitor, monitor_layer=monitor_layer, seed=seed,
        max_batch_size=int(args.get("max_batch_size", DEFAULT_MAX_BATCH)),
        model_files=model_files, run=run, donor=args.get("donor"), weights_sha256=model_sha,
        run_profile=recorded_run_profile(run) if run is not None else None,
    )
    if "resolved" in args:
        check_pinned(plan, args["resolved"])
    return plan


def check_pinned(plan: SteerPlan, pinned: dict[str, Any]) -> None:
    """Raise when files or the intervention differ from what `resolved_model_args` recorded earlier."""
    now = plan.pin()
    changed = [p for p, h in (pinned.get("sha256") or {}).items() if now["sha256"].get(p) != h]
    if changed:
        raise EmsteerError(f"files changed since model_args were resolved (sha256 differs): {', '.join(changed)}")
    if "intervention" in pinned and pinned["intervention"] != now["intervention"]:
        raise EmsteerError("the intervention differs from the one pinned in -M resolved (files or keys changed)")
