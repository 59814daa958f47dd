"""The Inspect `steer` model provider: `--model steer/<preset | local folder | hub id>` with `-M` keys.

    inspect eval evals/spillover.py --model steer/micro-qwen -M profile=tiny -T profile=tiny
    inspect eval evals/spillover.py --model steer/micro-qwen -M run=runs/r1 -M variant=own -M alpha=4

Construction validates every -M key and resolves the model, adapter and directions (`steer_plan`) before
any weights load; the first `generate()` (or `.loaded`) takes the process-wide shared model (`model_loading`:
one weight load per process, adapters loaded into it by name), so a task's bad input (Inspect builds the
model before the task) also fails before any weights load. `generate()` renders the chat template once, queues the request on the
model's batcher (`batching`) and waits for its row. Greedy when temperature is 0 or None; with a
temperature, each request samples with its own seed (`sampling.row_seed`: -M seed or Inspect's --seed,
the templated prompt and how many earlier requests of this eval had the same prompt and settings, e.g.
epochs), so a completion does not depend on its batch, and a rerun draws the same completions.

Every output's metadata holds `steer`: the full record of model, adapter, intervention and monitor with
the sha256 of every file used; `steer_sample`: the sample seed, batch size and monitor projections.
Inspect gives a provider no way to add keys to the eval's model_args: pass the output of
`resolved_model_args(...)` as model_args (as `emsteer sweep` does) to have the hashes and intervention
recorded there too; they are checked against the files when the model is built again (eval retry).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import weakref
from typing import Any

from inspect_ai.model import (
    ChatCompletionChoice,
    ChatMessage,
    ChatMessageAssistant,
    GenerateConfig,
    ModelAPI,
    ModelCall,
    ModelOutput,
    ModelUsage,
)
from inspect_ai.tool import ToolChoice, ToolInfo

from interventions.batching import GenSettings, Steering, batcher_for
from interventions.errors import EmsteerError
from interventions.generation import render_chat
from interventions.model_loading import LoadedModel, load_model
from interventions.sampling import row_seed
from interventions.steer_plan import SteerPlan, resolve_plan

DEFAULT_MAX_TOKENS = 2048

__all__ = ["SteerAPI", "chat_messages", "resolve_model_args", "resolved_model_args"]


def _model_name(model: str) -> str:
    return model[len("steer/"):] if model.startswith("steer/") else model


def resolved_model_args(model: str, model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """`model_args` plus `resolved`: the sha256 of every file the model would use and the full intervention.

    Pass the result as `model_args` to `inspect_ai.eval` so the eval log's model_args record them; the
    provider checks them against the files when it is built (so an eval retry with changed files fails)."""
    return resolve_model_args(model, model_args)[0]


def resolve_model_args(model: str, model_args: dict[str, Any] | None = None) -> tuple[dict[str, Any], SteerPlan]:
    """(`resolved_model_args(model, model_args)`, the plan it pins), resolving the plan once."""
    args = {k: v for k, v in (model_args or {}).items() if k != "resolved"}
    plan = resolve_plan(_model_name(model), args)
    return {**args, "resolved": plan.pin()}, plan


def chat_messages(input: list[ChatMessage]) -> list[dict[str, str]]:
    """Inspect messages as chat-template dicts (text only; tool messages are refused)."""
    out: list[dict[str, str]] = []
    for m in input:
        if m.role == "tool":
            raise EmsteerError("the steer provider does not support tool calls (a tool message was given)")
        out.append({"role": m.role, "content": m.text})
    return out


class SteerAPI(ModelAPI):
    """A local transformers model with an optional LoRA adapter, steering intervention and monitor."""

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig = GenerateConfig(), **model_args: Any) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, api_key_vars=[], config=config)
        self.plan: SteerPlan = resolve_plan(model_name, model_args)  # every check, no weights
        # weights load on first use (first generate), not here: Inspect builds the model before the task,
        # so a task's bad input (e.g. -T prompts=FILE) still fails before any weights load
        self._loaded: LoadedModel | None = None
        self._record: dict[str, Any] | None = None
        self._load_lock = threading.Lock()
        self.steering = Steering(adapter=self.plan.adapter_name, intervention=self.plan.intervention,
                                 monitor=self.plan.monitor, monitor_layer=self.plan.monitor_layer,
                                 max_batch_size=self.plan.max_batch_size)
        # per event loop (one per eval() call): a repeated eval in one process draws the same seeds
        self._occurrences: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, collections.Counter] = (
            weakref.WeakKeyDictionary())

    @property
    def loaded(self) -> LoadedModel:
        """The shared loaded model (+ this instance's adapter), loaded on first access."""
        if self._loaded is None:
            with self._load_lock:
                if self._loaded is None:
                    loaded = load_model(self.plan.load_key, self.plan.config.model_type)
                    if self.plan.adapter_dir is not None:
                        loaded.add_adapter(self.plan.adapter_dir, str(self.plan.adapter_name))
                    self._record = self.plan.record(loaded.files or None,
                                                    loaded.weights_sha256 if loaded.files else None)
                    self._loaded = loaded
        return self._loaded

    @property
    def record(self) -> dict[str, Any]:
        """The full record of model, adapter, intervention and monitor with every file's sha256."""
        self.loaded  # noqa: B018 - the record holds the hashes of the files actually loaded
        assert self._record is not None
        return self._record

    # ----------------------------------------------------------------------------- Inspect hooks

    def max_connections(self) -> int:
        """Concurrent samples when adaptive concurrency is off (or --max-connections unset): one full batch."""
        return self.plan.max_batch_size

    def max_tokens(self) -> int | None:
        return DEFAULT_MAX_TOKENS

    def collapse_user_messages(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to free: the weights stay in the process cache for other instances."""

    # ----------------------------------------------------------------------------- generation

    def settings(self, config: GenerateConfig) -> GenSettings:
        """Batch-level generation settings from Inspect's config (temperature 0/None = greedy)."""
        if config.num_choices not in (None, 1):
            raise EmsteerError(f"the steer provider generates one choice per call, got num_choices={config.num_choices}")
        max_tokens = config.max_tokens if config.max_tokens is not None else DEFAULT_MAX_TOKENS
        if max_tokens < 1:
            raise EmsteerError(f"max_tokens must be >= 1, got {max_tokens}")
        sampling = bool(config.temperature) and config.temperature > 0
        return GenSettings(
            max_new_tokens=int(max_tokens),
            temperature=float(config.temperature) if sampling else None,
            top_p=config.top_p if sampling else None,
            top_k=config.top_k if sampling else None,
            stop_seqs=tuple(config.stop_seqs or ()),
        )

    def encode(self, input: list[ChatMessage]) -> str:
        """The templated prompt of `input` (chat template with generation prompt; BOS only from the template)."""
        return render_chat(self.loaded.tokenizer, chat_messages(input))

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> tuple[ModelOutput, ModelCall]:
        if tools:
            raise EmsteerError("the steer provider does not support tools")
        text = self.encode(input)
        settings = self.settings(config)
        base_seed = config.seed if config.seed is not None else self.plan.seed
        counter = self._occurrences.setdefault(asyncio.get_running_loop(), collections.Counter())
        key = (text, settings, base_seed)
        occurrence = counter[key]
        counter[key] += 1
        seed = row_seed(base_seed, text, occurrence)
        row = await batcher_for(self.loaded).submit(text, seed, settings, self.steering)
        choice = ChatCompletionChoice(
            message=ChatMessageAssistant(content=row.text, model=self.model_name, source="generate"),
            stop_reason=row.stop_reason,
        )
        sample = {"seed": seed if settings.temperature else None, "occurrence": occurrence,
                  "batch_size": row.batch_size, "monitor": row.monitor}
        output = ModelOutput(
            model=self.model_name, choices=[choice],
            usage=ModelUsage(input_tokens=row.input_tokens, output_tokens=row.output_tokens,
                             total_tokens=row.input_tokens + row.output_tokens),
            time=row.seconds, metadata={"steer": self.record, "steer_sample": sample},
        )
        call = ModelCall.create(
            request={"prompt": text, "max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                     "top_p": settings.top_p, "top_k": settings.top_k, "stop_seqs": list(settings.stop_seqs),
                     "seed": sample["seed"]},
            response={"completion": row.text, "output_tokens": row.output_tokens, "stop_reason": row.stop_reason,
                      "batch_size": row.batch_size},
            time=row.seconds,
        )
        return output, call
