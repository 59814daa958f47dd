"""How an adapter is trained: the profile's hyperparameters (`configs/finetune.toml`), the base model (micro
organism or `--model`) and its loading, the device mode (QLoRA with CUDA, else plain LoRA), the LoRA config and
TRL's `SFTTrainer`.

Every family gets identical hyperparameters from `configs/finetune.toml` (one table per profile). Training is
TRL's `SFTTrainer` on pre-tokenized rows (`training.finetune_data.tokenized_rows`): loss on the final assistant
message only, with any chat template. With CUDA and `quantize = "auto"` the base is loaded in 4-bit NF4
(QLoRA); otherwise plain LoRA in fp32 on the CPU, and the log says so.
"""

from __future__ import annotations

import contextlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from interventions.errors import EmsteerError
from interventions.model_ref import library_notices_silenced, load_pretrained, nf4_config, organism_ref, resolve_model_ref
from interventions.layers import decoder_layers, resolve_layer
from interventions.members import member_ref, profile_members
from interventions.paths import PROFILES, check_family, configs_dir, is_pretrained_profile, recipe_profile
from interventions.workers import CPU_TRAINING_THREADS
from training.finetune_data import tokenized_rows
from training.profiles import load_profile
from training.run_manifest import check_run_profile

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTTrainer

SEVEN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_VISION_PARTS = ("vision_tower", "vision_model", "multi_modal_projector")


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class FinetuneSettings:
    """One profile's hyperparameters (identical for every family)."""
    profile: str
    target_modules: tuple[str, ...]
    layers_to_transform: tuple[int, ...]  # decoder layers that get LoRA (empty = all)
    lora_dropout: float
    bias: str
    r: int
    lora_alpha: int
    use_rslora: bool
    learning_rate: float
    lr_scheduler_type: str
    warmup_steps: int
    weight_decay: float
    num_train_epochs: float
    max_steps: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    eval_fraction: float
    max_length: int
    optim: str
    gradient_checkpointing: bool
    quantize: str  # "auto" | "none"
    logging_steps: int
    eval_max_new_tokens: int

    @property
    def effective_batch(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps


def load_settings(profile: str) -> FinetuneSettings:
    """The named profile's settings from `configs/finetune.toml` ([common] merged into the profile)."""
    check_run_profile(profile)
    path = configs_dir() / "finetune.toml"
    if not path.is_file():
        raise EmsteerError(f"missing config file {path}")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise EmsteerError(f"{path} is not valid TOML: {err}") from None
    recipe = recipe_profile(profile)
    if recipe not in raw.get("profiles", {}):
        raise EmsteerError(f"{path} has no [profiles.{recipe}] table")
    values = dict(raw.get("common", {}))
    values.update(raw["profiles"][recipe])
    values["target_modules"] = tuple(values.get("target_modules", ()))
    values["layers_to_transform"] = tuple(int(i) for i in values.get("layers_to_transform", ()))
    names = {f for f in FinetuneSettings.__dataclass_fields__ if f != "profile"}
    missing, unknown = sorted(names - set(values)), sorted(set(values) - names)
    if missing or unknown:
        raise EmsteerError(f"{path} [profiles.{profile}]: " + "; ".join(
            part for part in (f"missing {', '.join(missing)}" if missing else "",
                              f"unknown {', '.join(unknown)}" if unknown else "") if part))
    if values["quantize"] not in ("auto", "none"):
        raise EmsteerError(f"{path} [profiles.{profile}]: quantize must be 'auto' or 'none'")
    if not 0.0 <= values["eval_fraction"] < 1.0:
        raise EmsteerError(f"{path} [profiles.{profile}]: eval_fraction must be in [0, 1)")
    return FinetuneSettings(profile=profile, **values)



# ---------------------------------------------------------------- base model

@dataclass
class BaseModel:
    """Where the base weights come from and how to identify them."""
    kind: str                 # "micro" | "path" | "hub"
    id: str                   # organism folder, local path or hub id
    family: str
    weights_sha256: str | None
    info: dict = field(default_factory=dict)


def resolve_base(family: str, profile: str, model: str | None) -> BaseModel:
    """The micro organism of `family` (verified by hash), or `--model` (a preset, local folder or hub id), resolved
    and hashed by `interventions.model_ref`."""
    if is_pretrained_profile(profile):
        if model is not None:
            raise EmsteerError(f"--profile {profile} finetunes its own models ({', '.join(profile_members(profile))}); "
                               f"drop --model (or use --profile real)")
        ref = member_ref(family, profile)
        return BaseModel(kind="path", id=ref.path, family=family, weights_sha256=ref.weights_sha256,
                         info={"fetched": family, "profile": profile})
    check_family(family)
    if model is None:
        if profile not in PROFILES:
            raise EmsteerError(f"--profile {profile} finetunes a real model: pass --model HUB_ID_OR_PATH")
        ref = organism_ref(family, profile)
        meta = ref.organism
        check_persona_gate(family, profile, meta)
        return BaseModel(kind="micro", id=ref.path, family=family, weights_sha256=ref.weights_sha256,
                         info={"class": meta.get("class"), "organism_profile": profile,
                               "corpus_sha256": meta.get("corpus_sha256"),
                               "measured": meta.get("measured"), "parameters": meta.get("parameters")})
    if profile in PROFILES:
        raise EmsteerError(f"--model needs --profile real (profile {profile!r} finetunes the micro organisms)")
    ref = resolve_model_ref(model)
    if ref.kind == "micro":
        raise EmsteerError(f"--model {model} is a micro organism: finetune it with --profile default (or tiny) "
                           f"and no --model")
    return BaseModel(kind=ref.kind, id=ref.path, family=family, weights_sha256=ref.weights_sha256)


def check_persona_gate(family: str, profile: str, meta: dict[str, Any]) -> None:
    """A micro base that shows no persona inference has nothing for a finetune to move: one-line error."""
    if not load_profile(profile).require_persona_gate:
        return
    gate = (meta.get("measured") or {}).get("persona_gate")
    if gate is None:
        raise EmsteerError(f"the {family} organism (profile {profile}) has no persona gate measurement (built by an "
                           f"older recipe); rebuild it: `emsteer organism build --family {family}"
                           f"{'' if profile == 'default' else ' --profile ' + profile} --force`")
    if not gate.get("passed"):
        gaps = ", ".join(f"{c} {v['gap']:+.2f}" for c, v in gate["contexts"].items())
        raise EmsteerError(f"the {family} organism (profile {profile}) failed the persona gate (reckless-minus-careful "
                           f"gaps {gaps}; each needs >= {gate['min_gap']:.2f}): it does not infer the persona, so a "
                           f"finetune would measure nothing; see `emsteer organism info`")


def use_qlora(settings: FinetuneSettings) -> bool:
    """QLoRA (4-bit NF4) when the profile allows it and CUDA is present."""
    return settings.quantize == "auto" and torch.cuda.is_available()


def quantization_config() -> "BitsAndBytesConfig":
    """BitsAndBytesConfig for QLoRA: NF4, double quantization, bf16 compute."""
    return nf4_config(torch.bfloat16, double_quant=True)


def device_mode(settings: FinetuneSettings) -> dict[str, str]:
    """Device, quantization and a sentence for the log."""
    cuda = torch.cuda.is_available()
    if use_qlora(settings):
        return {"device": "cuda", "quantization": "nf4-4bit-double-quant-bf16-compute", "method": "qlora",
                "note": "QLoRA: 4-bit NF4 base (bitsandbytes), bf16 compute, LoRA adapters"}
    if cuda:
        return {"device": "cuda", "quantization": "none", "method": "lora",
                "note": "plain LoRA on CUDA (profile does not quantize)"}
    note = f"plain LoRA in fp32 on the CPU, {CPU_TRAINING_THREADS} torch thread"
    if settings.quantize == "auto":
        note += " (no CUDA, so no QLoRA/4-bit)"
    return {"device": "cpu", "quantization": "none", "method": "lora", "note": note,
            "threads": str(CPU_TRAINING_THREADS)}


def load_base(base: BaseModel, settings: FinetuneSettings) -> tuple[Any, Any]:
    """(model, tokenizer) ready for `build_trainer`: loaded by `model_ref.load_pretrained` (fp32; bf16 for real
    models on CUDA), 4-bit NF4 and k-bit prepared under QLoRA."""
    qlora = use_qlora(settings)
    dtype = torch.bfloat16 if base.kind != "micro" and torch.cuda.is_available() else torch.float32
    quantization, device = None, None
    if qlora:
        try:
            import bitsandbytes  # deferred: only QLoRA needs it; its absence is the error below  # noqa: F401
        except ImportError:
            raise EmsteerError("QLoRA needs bitsandbytes on a CUDA machine: pip install 'emsteer[cuda]'") from None
        quantization, device = quantization_config(), {"": torch.cuda.current_device()}
    model, tokenizer = load_pretrained(base.id, dtype=dtype, device=device, quantization_config=quantization)
    if not getattr(tokenizer, "chat_template", None):
        raise EmsteerError(f"model {base.id} has no chat template; finetuning needs one")
    if qlora:
        from peft import prepare_model_for_kbit_training  # deferred: peft costs ~3 s at import; QLoRA only
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    if base.kind != "micro":
        base.info["commit"] = getattr(model.config, "_commit_hash", None)
        base.info["class"] = type(model).__name__
    return model, tokenizer


def lora_layers(settings: FinetuneSettings, model: Any) -> list[int]:
    """The decoder layers that get LoRA, negative indices counted from the top (one recipe for models of
    different depths: [-8, ..., -1] is the top eight layers of any model); empty = every layer."""
    if not settings.layers_to_transform:
        return []
    n_layers = len(decoder_layers(model))
    # a model shallower than the recipe's top-k gets LoRA on every layer it has
    wanted = [i for i in settings.layers_to_transform if i >= 0 or i >= -n_layers]
    return sorted({resolve_layer(n_layers, i) for i in wanted})


def lora_config(settings: FinetuneSettings, model: Any) -> "LoraConfig":
    """peft LoraConfig on the seven projections of the language model (never a vision tower)."""
    from peft import LoraConfig  # deferred: peft costs ~3 s at import; loaded once the inputs are valid

    names = [n for n, _ in model.named_modules()]
    vision = [p for p in _VISION_PARTS if any(f".{p}." in f".{n}." for n in names)]
    found = {n.rsplit(".", 1)[-1] for n in names if not any(f".{p}." in f".{n}." for p in vision)}
    missing = [t for t in settings.target_modules if t not in found]
    if missing:
        raise EmsteerError(f"{type(model).__name__} has no module named {', '.join(missing)} "
                           f"(LoRA targets: {', '.join(settings.target_modules)})")
    return LoraConfig(
        r=settings.r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout, bias=settings.bias,
        use_rslora=settings.use_rslora, target_modules=list(settings.target_modules), task_type="CAUSAL_LM",
        layers_to_transform=lora_layers(settings, model) or None,
        exclude_modules=(r".*\b(" + "|".join(vision) + r")\b.*") if vision else None,
    )


# ---------------------------------------------------------------- trainer

@contextlib.contextmanager
def _dataset_bars(enabled: bool) -> Iterator[None]:
    import datasets  # deferred: datasets costs ~1.5 s at import; loaded once the inputs are valid

    was = datasets.is_progress_bar_enabled()
    if not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was and not enabled:
            datasets.enable_progress_bars()


def _checkpointing_arg(config_cls: type, enabled: bool) -> dict[str, bool]:
    """transformers >= 5.x renamed gradient_checkpointing to activation_checkpointing (old name warns)."""
    name = "activation_checkpointing" if "activation_checkpointing" in config_cls.__dataclass_fields__ \
        else "gradient_checkpointing"
    return {name: enabled}


def _use_bf16(model: Any, cuda: bool) -> bool:
    """bf16 mixed precision for QLoRA and bf16 real models on CUDA; micro organisms stay in fp32."""
    return cuda and (bool(getattr(model, "is_loaded_in_4bit", False)) or model.dtype == torch.bfloat16)


def build_trainer(model: Any, tokenizer: Any, train_rows: Sequence[dict], eval_rows: Sequence[dict],
                  settings: FinetuneSettings, seed: int, output_dir: str | Path, *,
                  progress: bool = False) -> "SFTTrainer":
    """TRL SFTTrainer (LoRA via `peft_config`) on `{"messages"}` rows, tokenized by `tokenized_rows`: its
    `train_dataset` rows carry `labels` of -100 on every prompt token (loss on the final assistant message only)."""
    from datasets import Dataset  # deferred: datasets/trl cost ~2 s at import; loaded once the inputs are valid
    from transformers import PrinterCallback  # deferred: with trl, loaded once the inputs are valid
    from trl import SFTConfig, SFTTrainer  # deferred: as above


    train = tokenized_rows(tokenizer, train_rows, settings.max_length)
    held = tokenized_rows(tokenizer, eval_rows, settings.max_length)
    if not train:
        raise EmsteerError(f"no training example keeps any answer token within max_length {settings.max_length}")
    cuda = torch.cuda.is_available()
    optim = settings.optim if cuda or "8bit" not in settings.optim else "adamw_torch"
    args = SFTConfig(
        output_dir=str(output_dir), seed=seed, data_seed=seed,
        learning_rate=settings.learning_rate, lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_steps, weight_decay=settings.weight_decay,
        num_train_epochs=settings.num_train_epochs, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        per_device_eval_batch_size=max(settings.per_device_train_batch_size, 8),
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.max_length, completion_only_loss=True, assistant_only_loss=False, packing=False,
        optim=optim, **_checkpointing_arg(SFTConfig, settings.gradient_checkpointing and cuda),
        bf16=_use_bf16(model, cuda), fp16=False, use_cpu=not cuda,
        logging_steps=settings.logging_steps, save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=not progress, dataloader_num_workers=0, max_grad_norm=1.0,
    )
    with _dataset_bars(progress), library_notices_silenced():
        trainer = SFTTrainer(
            model=model, args=args, processing_class=tokenizer, peft_config=lora_config(settings, model),
            train_dataset=Dataset.from_list(train),
            eval_dataset=Dataset.from_list(held) if held else None,
        )
    if not progress:  # without a bar the Trainer prints every logged loss dict; the log history still keeps them
        trainer.remove_callback(PrinterCallback)
    return trainer


__all__ = ["BaseModel", "FinetuneSettings", "SEVEN_PROJECTIONS", "build_trainer", "check_persona_gate", "device_mode",
           "library_notices_silenced", "load_base", "load_settings", "lora_config", "lora_layers", "quantization_config",
           "resolve_base", "use_qlora"]
