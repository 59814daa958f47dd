"""Layer lookup: the ONE place that knows where a model's text decoder layers live.

`decoder_layers(model)` returns the `nn.ModuleList` of the text decoder's layers, found through
`get_decoder()` (so Qwen2/Gemma2/Llama/Mistral/Ministral3 causal LMs and the multimodal
`Mistral3ForConditionalGeneration`, whose text layers are `model.model.language_model.layers`, all work;
a vision tower's `layers` are never returned). A peft `PeftModel` (LoRA) wrapper is peeled first.

Layer indices follow Python: `resolve_layer(model, -1)` is the final decoder layer. A hook on decoder layer
`i` sees that layer's output, which `output_hidden_states=True` reports as `hidden_states[i + 1]`, EXCEPT
for the final layer: `hidden_states[-1]` is taken after the final norm, while a hook on the last layer acts
before it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from interventions.errors import EmsteerError


def unwrap_model(model: nn.Module) -> nn.Module:
    """Peel wrappers (a peft `PeftModel`, repeatedly) and return the underlying transformers model."""
    seen = 0
    while hasattr(model, "get_base_model") and seen < 8:
        inner = model.get_base_model()
        if inner is model:
            break
        model = inner
        seen += 1
    return model


def text_decoder(model: nn.Module) -> nn.Module:
    """The text decoder module (the one owning `.layers`, `.norm`, `.embed_tokens`), via `get_decoder()`."""
    base = unwrap_model(model)
    if not hasattr(base, "get_decoder"):
        raise EmsteerError(f"{type(base).__name__} has no get_decoder(); cannot find its decoder layers")
    decoder = base.get_decoder()
    # A few composite models return a wrapper whose own get_decoder() leads to the text model.
    for _ in range(4):
        if isinstance(getattr(decoder, "layers", None), nn.ModuleList):
            break
        nxt = decoder.get_decoder() if hasattr(decoder, "get_decoder") else None
        if nxt is None or nxt is decoder:
            break
        decoder = nxt
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise EmsteerError(
            f"{type(base).__name__}.get_decoder() returned {type(decoder).__name__}, which has no `layers` ModuleList"
        )
    if "vision" in type(decoder).__name__.lower():
        raise EmsteerError(f"{type(base).__name__}.get_decoder() returned a vision module ({type(decoder).__name__})")
    return decoder


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The text decoder's layers (`model.get_decoder().layers`), through a peft wrapper if present."""
    return text_decoder(model).layers


def text_config(model: nn.Module) -> Any:
    """The text config (`config.get_text_config()`), which holds hidden_size and num_hidden_layers."""
    base = unwrap_model(model)
    config = getattr(base, "config", None)
    if config is None:
        raise EmsteerError(f"{type(base).__name__} has no config")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream (d_model) read from the text config."""
    size = getattr(text_config(model), "hidden_size", None)
    if not isinstance(size, int):
        raise EmsteerError(f"cannot read hidden_size from the text config of {type(unwrap_model(model)).__name__}")
    return size


def num_layers(model: nn.Module) -> int:
    """Number of text decoder layers (length of `decoder_layers(model)`)."""
    return len(decoder_layers(model))


def resolve_layer(model_or_n_layers: nn.Module | int, layer: int) -> int:
    """Turn a layer index (negative counts from the end) into a non-negative one, or raise naming the range."""
    n = model_or_n_layers if isinstance(model_or_n_layers, int) else num_layers(model_or_n_layers)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise EmsteerError(f"layer must be an integer, got {layer!r}")
    if n <= 0:
        raise EmsteerError(f"model has no decoder layers (n_layers={n})")
    if not -n <= layer < n:
        raise EmsteerError(f"layer {layer} is out of range for {n} decoder layers; valid: {-n}..{n - 1}")
    return layer % n


def layer_dtype_device(layer: nn.Module) -> tuple[torch.dtype, torch.device]:
    """Dtype and device of a layer's first floating-point parameter (fp32/CPU if it has none)."""
    for p in layer.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    for p in layer.parameters():
        return torch.float32, p.device
    return torch.float32, torch.device("cpu")
