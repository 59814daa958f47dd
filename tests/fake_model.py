"""The tests' one fake Inspect model: `emsteerfake/<name>` answers with what the running test installed.

Offline tests need it because Inspect's `mockllm` wants a tiktoken download. A test (or an autouse fixture)
installs a responder with `answering(fn)`; `fn(model_name, messages, config)` returns the `ModelOutput`, so one
class serves a canned model under test, a grader with fixed logprobs and outputs carrying provider metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from inspect_ai.model import ChatMessage, GenerateConfig, ModelAPI, ModelOutput, modelapi
from inspect_ai.tool import ToolChoice, ToolInfo

Responder = Callable[[str, list[ChatMessage], GenerateConfig], ModelOutput]
NAME = "emsteerfake"
_responder: list[Responder] = []


@contextmanager
def answering(respond: Responder) -> Iterator[None]:
    """Within the block, every `emsteerfake/<name>` model answers through `respond`; removed on every path."""
    _responder.append(respond)
    try:
        yield
    finally:
        _responder.remove(respond)


@modelapi(name=NAME)
class FakeModel(ModelAPI):
    """Delegates each generate call to the innermost responder installed by `answering`."""

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig = GenerateConfig(), **model_args) -> None:
        super().__init__(model_name, base_url, api_key, [], config)

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> ModelOutput:
        if not _responder:
            raise RuntimeError(f"{NAME}/{self.model_name} called with no responder installed (use answering())")
        return _responder[-1](self.model_name, input, config)
