"""The ONE hook mechanism: `Intervention` (what to do) + `steer(...)` / `monitor(...)` (context managers that
install forward hooks on text decoder layers and ALWAYS remove them, exceptions included).

Semantics at each chosen decoder layer, on that layer's output hidden states h (per position):
- ``add``:      h + alpha * R * u
- ``subtract``: h - alpha * R * u
- ``ablate``:   h - (h . u) u        (alpha and R unused)
where u = d / ||d|| and R is the mean residual norm at that layer, so ||delta|| == |alpha| * R at every edited
position whatever the variant's raw norm. The vector is cast to the hidden dtype/device once at install
(and cached per dtype/device if a layer's output ever differs); the hook does one fused tensor op.

Where the edit shows: steering hooks are registered with ``prepend=True`` and return the edited output, so the
next layer and transformers' ``output_hidden_states`` capture hooks (installed permanently on first use) both see
it: ``hidden_states[i + 1]`` reflects an edit at layer i, except for the LAST layer, where ``hidden_states[-1]`` is
taken after the final norm; the hook acts before that norm.

Positions (``positions=``):
- ``"all"``: every position of every forward call (prompt and generated alike).
- ``"generated"``: only positions after the prompt. A pre-hook on the text decoder reads the KV-cache length
  ``past`` of each forward call, so position ``t`` of a call has absolute (padded) index ``past + t``.
  * ``prompt_lengths=None``: a call that starts a sequence (no or empty cache: the prefill, or any plain
    forward) is prompt and is left unchanged; every position of a call that continues a cache (``past > 0``,
    the decoding steps of ``generate``, seq_len 1) is generated and is edited. Consequence: the FIRST generated
    token is predicted from the last prompt position and is therefore unsteered; steering starts with the
    hidden state of the first generated token (which shapes the second token onward). With
    ``use_cache=False`` nothing would be edited, so pass ``prompt_lengths`` then.
  * ``prompt_lengths=P`` (int, or one int per batch row): positions with absolute index ``>= P[row]`` are
    edited, in the coordinates of the padded ``input_ids`` (with left padding, P is the padded prompt width,
    the same for every row). Works with and without a KV cache.
Layer outputs may be a Tensor (transformers 5) or a tuple whose first item is the hidden states (4.x).
Per-call state lives in a thread-local, so one model must not run concurrent forwards inside one context.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from interventions.directions import check_vector, unit
from interventions.errors import EmsteerError
from interventions.layers import decoder_layers, hidden_size, layer_dtype_device, resolve_layer, text_decoder

OPS: tuple[str, ...] = ("subtract", "add", "ablate")
POSITIONS: tuple[str, ...] = ("all", "generated")


@dataclass
class Intervention:
    """What to do to the residual stream: `op` with `direction` at `layers` (negative = from the end).

    `alpha` is the perturbation size in units of `R`, the mean residual norm at the layer (one R for all listed
    layers). `direction` is validated (1-D, finite, nonzero) and stored as fp32 on CPU."""

    op: str
    direction: torch.Tensor
    layers: list[int]
    alpha: float = 1.0
    R: float = 1.0
    positions: str = "all"

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise EmsteerError(f"unknown op {self.op!r}; choose one of: {', '.join(OPS)}")
        if self.positions not in POSITIONS:
            raise EmsteerError(f"unknown positions {self.positions!r}; choose one of: {', '.join(POSITIONS)}")
        self.direction = check_vector(self.direction, "intervention direction")
        layers = [self.layers] if isinstance(self.layers, int) else list(self.layers)
        if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise EmsteerError(f"layers must be a non-empty list of ints, got {self.layers!r}")
        self.layers = layers
        self.alpha, self.R = float(self.alpha), float(self.R)
        if not math.isfinite(self.alpha):
            raise EmsteerError(f"alpha must be finite, got {self.alpha}")
        if not (math.isfinite(self.R) and self.R > 0):
            raise EmsteerError(f"R (mean residual norm) must be finite and > 0, got {self.R}")

    @property
    def unit(self) -> torch.Tensor:
        """unit(direction), fp32."""
        return unit(self.direction)

    def delta(self) -> torch.Tensor:
        """The vector added to h for add/subtract (fp32): +-alpha*R*unit(direction)."""
        if self.op == "ablate":
            raise EmsteerError("ablate has no additive delta")
        sign = -1.0 if self.op == "subtract" else 1.0
        return (unit(self.direction.double()) * (sign * self.alpha * self.R)).float()

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of the intervention (the vector itself is summarised by width and norm)."""
        return {
            "op": self.op,
            "layers": list(self.layers),
            "alpha": self.alpha,
            "R": self.R,
            "positions": self.positions,
            "d_model": int(self.direction.shape[0]),
            "direction_norm": float(self.direction.double().norm()),
        }


class _CallTracker:
    """Forward pre-hook on the text decoder recording, per forward call, the KV-cache length and 2-D mask."""

    def __init__(self) -> None:
        self._local = threading.local()

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = 0
        if cache is not None and hasattr(cache, "get_seq_length"):
            past = int(cache.get_seq_length())
        mask = kwargs.get("attention_mask")
        self._local.past = past
        self._local.mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None

    @property
    def past(self) -> int:
        return getattr(self._local, "past", 0)

    def padding_mask(self, batch: int, seq: int) -> torch.Tensor | None:
        """Bool [batch, seq] of real (non-pad) tokens for the current call, or None if unknown."""
        mask = getattr(self._local, "mask", None)
        if mask is None or mask.shape[0] != batch:
            return None
        past = self.past
        if mask.shape[1] >= past + seq:
            return mask[:, past : past + seq].bool()
        if mask.shape[1] == seq:
            return mask.bool()
        return None


class _PositionRule:
    """Which positions of a forward call are selected (see module docstring)."""

    def __init__(self, positions: str, tracker: _CallTracker, prompt_lengths: int | Sequence[int] | None) -> None:
        if positions not in POSITIONS:
            raise EmsteerError(f"unknown positions {positions!r}; choose one of: {', '.join(POSITIONS)}")
        self.positions = positions
        self.tracker = tracker
        self.prompt_lengths = prompt_lengths

    @property
    def prompt_lengths(self) -> int | Sequence[int] | None:
        return self._prompt_lengths

    @prompt_lengths.setter
    def prompt_lengths(self, value: int | Sequence[int] | None) -> None:
        if value is not None and not isinstance(value, int):
            value = [int(v) for v in value]
        self._prompt_lengths = value
        self._lens_cache: dict[torch.device, torch.Tensor] = {}

    def select(self, batch: int, seq: int, device: torch.device) -> torch.Tensor | bool:
        """True = every position, False = none, else a bool tensor [batch, seq]."""
        if self.positions == "all":
            return True
        past = self.tracker.past
        lens = self._prompt_lengths
        if lens is None:
            return past > 0
        if isinstance(lens, int):
            if past >= lens:
                return True
            if past + seq <= lens:
                return False
            idx = torch.arange(past, past + seq, device=device)
            return (idx >= lens).unsqueeze(0).expand(batch, seq)
        if len(lens) != batch:
            raise EmsteerError(f"prompt_lengths has {len(lens)} entries but the batch has {batch} rows")
        t = self._lens_cache.get(device)
        if t is None:
            t = self._lens_cache[device] = torch.tensor(lens, device=device)
        idx = torch.arange(past, past + seq, device=device)
        return idx.unsqueeze(0) >= t.unsqueeze(1)


def _check_width(model: nn.Module, width: int, what: str) -> None:
    """Compare a vector's width with the model's hidden size when the model has a config."""
    try:
        d_model = hidden_size(model)
    except EmsteerError:
        return  # no config (e.g. a bare test module): the first forward will fail loudly instead
    if width != d_model:
        raise EmsteerError(f"{what} width {width} does not match the model's hidden size {d_model}")


def _hidden(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _replace_hidden(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    return (new, *output[1:])


class _VecCache:
    """A vector converted to each (dtype, device) once."""

    def __init__(self, vec: torch.Tensor, dtype: torch.dtype, device: torch.device) -> None:
        self._src = vec
        self._cache = {(dtype, device): vec.to(device=device, dtype=dtype)}

    def get(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = self._src.to(device=like.device, dtype=like.dtype)
        return v


class SteeringHandle:
    """Yielded by `steer`: the resolved layers, an edit counter, and a settable `prompt_lengths`."""

    def __init__(self, intervention: Intervention, layers: list[int], rule: _PositionRule) -> None:
        self.intervention = intervention
        self.layers = layers
        self._rule = rule
        self.edits = 0  # forward calls in which some position was edited (summed over layers)

    @property
    def prompt_lengths(self) -> int | Sequence[int] | None:
        return self._rule.prompt_lengths

    @prompt_lengths.setter
    def prompt_lengths(self, value: int | Sequence[int] | None) -> None:
        self._rule.prompt_lengths = value


def _steer_hook(op: str, vec: _VecCache, rule: _PositionRule, handle: SteeringHandle):
    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        h = _hidden(output)
        sel = rule.select(h.shape[0], h.shape[1], h.device)
        if sel is False:
            return None
        v = vec.get(h)
        if op == "ablate":
            new = h - (h @ v).unsqueeze(-1) * v
            if sel is not True:
                new = torch.where(sel.unsqueeze(-1), new, h)
        elif sel is True:
            new = h + v
        else:
            new = h + sel.unsqueeze(-1).to(h.dtype) * v
        handle.edits += 1
        return _replace_hidden(output, new)

    return hook


@contextmanager
def steer(
    model: nn.Module,
    intervention: Intervention,
    *,
    prompt_lengths: int | Sequence[int] | None = None,
) -> Iterator[SteeringHandle]:
    """Apply `intervention` inside the `with` block; hooks are removed on exit, whatever happens.

    `model` may be a transformers model or a peft wrapper. See the module docstring for positions."""
    layers_list = decoder_layers(model)
    _check_width(model, int(intervention.direction.shape[0]), "intervention direction")
    layers = sorted({resolve_layer(len(layers_list), i) for i in intervention.layers})
    if intervention.op == "ablate":
        vec = unit(intervention.direction.double()).float()
    else:
        vec = intervention.delta()
    tracker = _CallTracker()
    rule = _PositionRule(intervention.positions, tracker, prompt_lengths)
    handle = SteeringHandle(intervention, layers, rule)
    removers = []
    try:
        removers.append(text_decoder(model).register_forward_pre_hook(tracker.pre_hook, with_kwargs=True))
        for i in layers:
            layer = layers_list[i]
            dtype, device = layer_dtype_device(layer)
            hook = _steer_hook(intervention.op, _VecCache(vec, dtype, device), rule, handle)
            removers.append(layer.register_forward_hook(hook, prepend=True))
        yield handle
    finally:
        for r in reversed(removers):
            r.remove()


@dataclass
class Monitor:
    """Yielded by `monitor`: per-row projections h . unit(d) at `layer` over the selected positions.

    Each forward call appends its projections; a call that starts a fresh sequence (empty KV cache) clears
    earlier ones, so read `summary()` after each `generate` / scoring forward."""

    layer: int
    positions: str
    _proj: list[torch.Tensor] = field(default_factory=list, repr=False)
    _valid: list[torch.Tensor] = field(default_factory=list, repr=False)

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self._proj.clear()
        self._valid.clear()

    def _add(self, proj: torch.Tensor, valid: torch.Tensor) -> None:
        if self._proj and self._proj[0].shape[0] != proj.shape[0]:
            self.reset()
        self._proj.append(proj)
        self._valid.append(valid)

    def values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(projections [B, N] fp32 CPU, valid [B, N] bool CPU) over all recorded positions, in order."""
        if not self._proj:
            return torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.bool)
        return torch.cat(self._proj, 1).float().cpu(), torch.cat(self._valid, 1).cpu()

    def summary(self, lengths: Sequence[int] | None = None) -> list[dict[str, float | int | None]]:
        """Per batch row: {"mean", "max", "n"} over the selected, non-padding positions; with `lengths`, only each
        row's first lengths[row] of them (e.g. generated tokens up to EOS). Rows with n == 0 get None."""
        proj, valid = self.values()
        if lengths is not None:
            if len(lengths) != proj.shape[0]:
                raise EmsteerError(f"lengths has {len(lengths)} entries but {proj.shape[0]} rows were recorded")
            limit = torch.tensor([int(n) for n in lengths]).unsqueeze(1)
            valid = valid & (valid.long().cumsum(1) <= limit)
        out: list[dict[str, float | int | None]] = []
        for row in range(proj.shape[0]):
            vals = proj[row][valid[row]]
            n = int(vals.numel())
            out.append({
                "mean": float(vals.double().mean()) if n else None,
                "max": float(vals.max()) if n else None,
                "n": n,
            })
        return out


def _monitor_hook(vec: _VecCache, rule: _PositionRule, tracker: _CallTracker, mon: Monitor):
    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        h = _hidden(output)
        b, t = h.shape[0], h.shape[1]
        if tracker.past == 0:
            mon.reset()
        sel = rule.select(b, t, h.device)
        if sel is False:
            return None
        valid = torch.ones(b, t, dtype=torch.bool, device=h.device) if sel is True else sel.clone()
        pad = tracker.padding_mask(b, t)
        if pad is not None:
            valid &= pad.to(h.device)
        proj = (h.detach().float() @ vec.get(h.detach().float()))
        mon._add(proj, valid)
        return None

    return hook


@contextmanager
def monitor(
    model: nn.Module,
    direction: torch.Tensor,
    layer: int,
    *,
    positions: str = "generated",
    prompt_lengths: int | Sequence[int] | None = None,
) -> Iterator[Monitor]:
    """Record projections of the output of decoder layer `layer` onto unit(direction), changing nothing.

    Positions follow `steer`'s rules; padding (a 2-D attention mask passed to the decoder) is excluded. The hook
    is appended after any steering hooks, so with `steer` active at the same layer it sees the edited state."""
    vec = unit(check_vector(direction, "monitor direction").double()).float()
    layers_list = decoder_layers(model)
    _check_width(model, int(vec.shape[0]), "monitor direction")
    idx = resolve_layer(len(layers_list), layer)
    tracker = _CallTracker()
    rule = _PositionRule(positions, tracker, prompt_lengths)
    mon = Monitor(layer=idx, positions=positions)
    target = layers_list[idx]
    _, device = layer_dtype_device(target)
    removers = []
    try:
        removers.append(text_decoder(model).register_forward_pre_hook(tracker.pre_hook, with_kwargs=True))
        removers.append(target.register_forward_hook(_monitor_hook(_VecCache(vec, torch.float32, device), rule, tracker, mon)))
        yield mon
    finally:
        for r in reversed(removers):
            r.remove()


@contextmanager
def capture(
    model: nn.Module,
    layers: Sequence[int],
    reduce: Any,
) -> Iterator[dict[int, Any]]:
    """Read (never change) the outputs of decoder layers `layers` (negative = from the end).

    For every forward call, `reduce(layer_index, hidden)` is called with that layer's output hidden states
    (the residual stream AFTER the layer, BEFORE the model's final norm, as a hook on the last layer sees
    it; detached, in the model's dtype) and its result is stored in the yielded dict under the resolved
    layer index (a later call overwrites an earlier one). Hooks are appended after any steering hooks, so
    with `steer` active they see the edited state, and are removed on exit, exceptions included."""
    layers_list = decoder_layers(model)
    resolved = sorted({resolve_layer(len(layers_list), i) for i in layers})
    results: dict[int, Any] = {}

    def make(idx: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            results[idx] = reduce(idx, _hidden(output).detach())
            return None

        return hook

    removers = []
    try:
        for i in resolved:
            removers.append(layers_list[i].register_forward_hook(make(i)))
        yield results
    finally:
        for r in reversed(removers):
            r.remove()
