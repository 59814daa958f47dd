"""One model reference: resolve what a command or `steer/` names (a micro organism, a preset, a local folder, a
hub id) to the weights it means and what identifies them, and load it (with or without a LoRA adapter). Every
command and the Inspect provider resolve, hash and load models here, so they agree on what a model is.

Weights are identified by `interventions.weights_hash.weights_sha256`, the one weights hash.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from interventions.errors import EmsteerError
from interventions.families import family_for_model_type
from interventions.organism_cache import verify_organism
from interventions.paths import FETCH_RECORD, fetched_model_dir
from interventions.presets import Preset, find_preset, preset_names
from interventions.weights_hash import weights_sha256

DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto", "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
}
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_RECORD = "finetune.json"  # written by `emsteer finetune` beside the adapter: its base, data and hashes
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ------------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class ConfigInfo:
    """What validation needs from config.json (no weights read)."""

    model_type: str
    architectures: tuple[str, ...]
    n_layers: int
    d_model: int
    text_model_type: str


def read_config(model: str | Path, trust_remote_code: bool = False) -> ConfigInfo:
    """Layer count and hidden size from the model's config.json (AutoConfig; no weights)."""
    from transformers import AutoConfig  # deferred: importing transformers costs seconds on every CLI start

    try:
        config = AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - one line naming the model
        raise EmsteerError(f"cannot read the config of {str(model)!r} ({_first_line(err)})") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers, d_model = getattr(text, "num_hidden_layers", None), getattr(text, "hidden_size", None)
    if not isinstance(n_layers, int) or not isinstance(d_model, int):
        raise EmsteerError(f"config of {str(model)!r} has no num_hidden_layers/hidden_size in its text config")
    return ConfigInfo(model_type=str(config.model_type), architectures=tuple(config.architectures or ()),
                      n_layers=n_layers, d_model=d_model, text_model_type=str(getattr(text, "model_type", "")))


def auto_class_for(config: ConfigInfo) -> str:
    """The transformers auto class that loads a checkpoint: image-text-to-text for `*ForConditionalGeneration`
    (real Ministral 3 checkpoints), else causal LM."""
    if any(a.endswith("ForConditionalGeneration") for a in config.architectures):
        return "AutoModelForImageTextToText"
    return "AutoModelForCausalLM"


def local_snapshot(model: str) -> Path | None:
    """A local folder for `model`: the folder itself, or the cached snapshot of a hub id (None if the hub
    id is not in the local Hugging Face cache)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download  # deferred: its download stack, ~0.5 s; only hub ids need it

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or not a valid id): the caller decides
        return None


# ------------------------------------------------------------------------------------------- references

@dataclass
class ModelRef:
    """A resolved model: where from_pretrained finds it and what identifies it. Nothing is loaded; the weights
    hash and the config are read on first use."""

    name: str                      # what was asked for: a family, preset, folder or hub id
    kind: str                      # "micro" | "path" | "hub"
    path: str                      # organism or local folder (absolute), or hub id: what from_pretrained reads
    model_id: str                  # "micro-<family>" for organisms, else the folder as given or the hub id
    family: str | None = None      # micro organisms (and family presets) only
    profile: str | None = None     # micro organisms only
    preset: Preset | None = None
    auto_class: str = ""           # from the preset; "" = chosen from the config (`auto_class_for`)
    organism: dict[str, Any] = field(default_factory=dict)  # organism.json of a micro organism

    @functools.cached_property
    def folder(self) -> Path | None:
        """The local folder of the weights (None for a hub id not in the local Hugging Face cache)."""
        return Path(self.path) if self.kind != "hub" else local_snapshot(self.path)

    @functools.cached_property
    def weights_sha256(self) -> str | None:
        """`weights_sha256` of the folder (None for a hub id not downloaded yet); error without safetensors."""
        return weights_sha256(self.folder) if self.folder is not None else None

    @functools.cached_property
    def config(self) -> ConfigInfo:
        """Depth, width and model type from config.json (no weights)."""
        return read_config(self.path)

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    @property
    def d_model(self) -> int:
        return self.config.d_model


def organism_ref(family: str, profile: str = "default") -> ModelRef:
    """The built micro organism of `family` (checked whole); one-line error naming the build command if not."""
    meta = verify_organism(family, profile)
    return ModelRef(name=family, kind="micro", path=str(meta["path"]), model_id=f"micro-{family}", family=family,
                    profile=profile, organism=meta)


def folder_ref(folder: str | Path) -> ModelRef:
    """A local model folder (it must hold config.json); its model id is the folder as given."""
    path = Path(folder).expanduser()
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise EmsteerError(f"{path} is not a model folder (no config.json)")
    return ModelRef(name=str(folder), kind="path", path=str(path.resolve()), model_id=str(path))


def fetched_ref(model: str) -> ModelRef:
    """The folder `emsteer model fetch MODEL` wrote; one-line error naming that command when it is not there."""
    folder = fetched_model_dir(model)
    if not (folder / FETCH_RECORD).is_file():
        raise EmsteerError(f"model {model!r} is not fetched yet ({folder} has no {FETCH_RECORD}); "
                           f"run `emsteer model fetch {model}`")
    return ModelRef(name=model, kind="path", path=str(folder.resolve()), model_id=str(folder))


def resolve_model_ref(name: str, profile: str = "default") -> ModelRef:
    """A preset (`micro-*` = the built organism of `profile`; fetched ones = their folder under the cache; the others
    = their hub id), an existing local model folder, or a hub id (owner/name); one-line error otherwise."""
    preset = find_preset(name)
    if preset is not None:
        if preset.micro:
            assert preset.family is not None  # find_preset requires a family for micro presets
            ref = organism_ref(preset.family, profile)
            ref.name, ref.preset, ref.auto_class = name, preset, preset.auto_class
            return ref
        if preset.fetched:
            ref = fetched_ref(preset.fetched)
            ref.name, ref.preset, ref.family, ref.auto_class = name, preset, preset.family, preset.auto_class
            return ref
        return ModelRef(name=name, kind="hub", path=str(preset.hub_id), model_id=str(preset.hub_id),
                        family=preset.family, preset=preset, auto_class=preset.auto_class)
    if Path(name).expanduser().exists():
        return folder_ref(name)
    if HUB_ID.match(name):
        return ModelRef(name=name, kind="hub", path=name, model_id=name)
    raise EmsteerError(f"unknown model {name!r}: not a preset ({', '.join(preset_names())}), "
                       f"not an existing folder, not a hub id (owner/name)")


# ------------------------------------------------------------------------------------------- adapters

def check_adapter(folder: str | Path, label: str | None = None) -> Path:
    """The absolute adapter folder, checked to hold a peft LoRA adapter in safetensors (never a pickle)."""
    path = Path(folder).expanduser()
    label = label or str(path)
    if not (path / ADAPTER_CONFIG).is_file():
        raise EmsteerError(f"{label} is not a LoRA adapter folder (no {ADAPTER_CONFIG})")
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise EmsteerError(f"{label} has no {ADAPTER_WEIGHTS} (pickled adapter weights such as adapter_model.bin "
                           f"are never loaded)")
    return path.resolve()


def adapter_sha256(folder: str | Path) -> str:
    """The weights hash of a LoRA adapter folder (checked to be one): `weights_sha256`, as finetune.json records."""
    return weights_sha256(check_adapter(folder))


def check_adapter_base(adapter: str | Path, base_sha256: str | None, what: str = "") -> None:
    """One-line error when the adapter's finetune.json says it was trained on other base weights than
    `base_sha256` (nothing to check for an adapter made elsewhere, or an unknown base hash)."""
    try:
        recorded = json.loads((Path(adapter) / ADAPTER_RECORD).read_text()).get("base_model", {}).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return
    if recorded and base_sha256 and recorded != base_sha256:
        raise EmsteerError(f"{what or 'adapter'} at {adapter} was trained on other base weights "
                           f"({recorded[:12]}..., the base is now {base_sha256[:12]}...); retrain it with --force")


# ------------------------------------------------------------------------------------------- loading

def default_device() -> str:
    """cuda:0 when CUDA is available, else mps, else cpu."""
    if torch.cuda.is_available():
        return "cuda:0"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def nf4_config(compute_dtype: torch.dtype, double_quant: bool = False) -> Any:
    """bitsandbytes 4-bit NF4 weights (`load_in_4bit` inference; QLoRA finetuning with double quantization)."""
    from transformers import BitsAndBytesConfig  # deferred: importing transformers costs seconds on every CLI start

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype)


# Deprecation notices the libraries raise at each other (transformers about an attribute that TRL and peft read, on
# every adapter load and finetune), not about anything a user of emsteer can change: silenced around those calls only.
LIBRARY_NOTICES: tuple[str, ...] = (r"`is_gradient_checkpointing` is deprecated",)


@contextlib.contextmanager
def library_notices_silenced() -> Iterator[None]:
    """Silence `LIBRARY_NOTICES` (FutureWarning/DeprecationWarning) inside the block; every other warning shows."""
    with warnings.catch_warnings():
        for pattern in LIBRARY_NOTICES:
            warnings.filterwarnings("ignore", message=pattern, category=FutureWarning)
            warnings.filterwarnings("ignore", message=pattern, category=DeprecationWarning)
        yield


def attach_adapter(model: Any, folder: str | Path, name: str = "default") -> Any:
    """`model` with the LoRA adapter in `folder` loaded under `name`, not trainable, never merged (wrapped by peft on
    the first adapter, added beside the others after); one-line error if peft cannot load it."""
    from peft import PeftModel  # deferred: peft imports transformers

    try:
        with library_notices_silenced():
            if not isinstance(model, PeftModel):
                return PeftModel.from_pretrained(model, str(folder), adapter_name=name, is_trainable=False)
            model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        return model
    except Exception as err:  # noqa: BLE001
        raise EmsteerError(f"cannot load the LoRA adapter in {folder}: {_first_line(err)}") from None


def load_pretrained(model: str | Path, *, auto_class: str = "", model_type: str | None = None,
                    dtype: str | torch.dtype = "auto", device: str | dict[str, Any] | None = None,
                    trust_remote_code: bool = False, quantization_config: Any = None,
                    adapter: str | Path | None = None, padding_side: str | None = None,
                    fast_tokenizer: bool = False) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of a local folder or hub id: safetensors only, Gemma-2's eager attention,
    pad = eos when the tokenizer has none, an optional LoRA `adapter` wrapped around it. `auto_class`/`model_type`
    default to the config's; `device` None keeps transformers' default placement (the CPU)."""
    import transformers  # deferred: importing transformers costs seconds on every CLI start

    if not auto_class or model_type is None:
        info = read_config(model, trust_remote_code)
        auto_class = auto_class or auto_class_for(info)
        model_type = info.model_type if model_type is None else model_type
    kwargs: dict[str, Any] = dict(dtype=DTYPES[dtype] if isinstance(dtype, str) else dtype,
                                  trust_remote_code=trust_remote_code, use_safetensors=True)
    family = family_for_model_type(model_type)
    if family is not None and family.attn_implementation is not None:
        kwargs["attn_implementation"] = family.attn_implementation  # e.g. Gemma-2's softcapping needs eager
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device is not None:
        kwargs["device_map"] = device
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(model), trust_remote_code=trust_remote_code)
        if fast_tokenizer and not getattr(tokenizer, "is_fast", False):
            raise EmsteerError(f"{model}: a fast tokenizer is required (character offsets are needed)")
        loaded = getattr(transformers, auto_class).from_pretrained(str(model), **kwargs)
    except EmsteerError:
        raise
    except Exception as err:  # noqa: BLE001 - one line naming the model
        raise EmsteerError(f"cannot load {str(model)!r} with {auto_class}: {_first_line(err)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    if adapter is not None:
        loaded = attach_adapter(loaded, adapter)
    loaded.eval()
    return loaded, tokenizer
