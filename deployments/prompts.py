"""Prompt rendering in the ingress: chat template and tokenization, then context-length checks."""

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from jinja2 import TemplateError
from transformers import AutoTokenizer

from deployments.errors import invalid_request
from deployments.protocol import ChatMessage, CompletionRequest

# Templates know system/user/assistant; OpenAI's newer `developer` role is a system message.
_TEMPLATE_ROLES = {"developer": "system"}
_T = TypeVar("_T")


class PromptRenderer:
    """Turns OpenAI messages or prompts into the token ids the engine receives."""

    def __init__(self, tokenizer_path: str) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)

    def chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Apply the model's chat template, ready for the assistant's answer."""
        if not self._tokenizer.chat_template:
            raise invalid_request("This model has no chat template; use /v1/completions.")
        conversation = [
            {"role": _TEMPLATE_ROLES.get(m.role, m.role), "content": m.text()} for m in messages
        ]
        try:
            text = self._tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False
            )
        except TemplateError as exc:
            message = f"The chat template rejected the messages: {exc}"
            raise invalid_request(message, "messages") from None
        return self._tokenizer.encode(text, add_special_tokens=False)

    def completion(self, request: CompletionRequest) -> list[list[int]]:
        """One token-id list per prompt of a text completion request."""
        value = request.prompt
        if isinstance(value, str):
            return [self.encode(value)]
        if all(isinstance(item, int) for item in value):
            return [list(value)]
        return [self.encode(item) if isinstance(item, str) else list(item) for item in value]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, tokens: Sequence[int]) -> str:
        if any(t < 0 or t >= len(self._tokenizer) for t in tokens):
            raise invalid_request("A token id is outside the vocabulary.", "tokens")
        return self._tokenizer.decode(tokens)


class OffLoopRenderer:
    """A PromptRenderer for an event loop: its work runs on a worker thread of its own.

    The ingress's loop relays every stream's chunks; the Rust tokenizer releases the GIL, so
    tokenizing a long prompt there does not hold up the other requests' chunks
    (`benchmarks/loop_stall.py` measures the gaps). One thread, as in vLLM's API server: the
    tokenizer is never used from two threads at once.
    """

    def __init__(self, renderer: PromptRenderer) -> None:
        self._renderer = renderer
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")

    async def chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        return await self._run(self._renderer.chat, messages)

    async def completion(self, request: CompletionRequest) -> list[list[int]]:
        return await self._run(self._renderer.completion, request)

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return await self._run(self._renderer.encode, text, add_special_tokens)

    async def decode(self, tokens: Sequence[int]) -> str:
        return await self._run(self._renderer.decode, tokens)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)


def resolve_max_tokens(
    prompt_len: int, requested: int | None, max_model_len: int, prompt_param: str
) -> int:
    """The completion budget: as requested if it fits the context, else a 400 naming the cause."""
    if prompt_len >= max_model_len:
        raise invalid_request(
            f"This model's maximum context length is {max_model_len} tokens, "
            f"but the prompt has {prompt_len} tokens.",
            prompt_param,
            "context_length_exceeded",
        )
    if requested is None:
        return max_model_len - prompt_len
    if prompt_len + requested > max_model_len:
        raise invalid_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} "
            "for the completion). Reduce the prompt or max_tokens.",
            "max_tokens",
            "context_length_exceeded",
        )
    return requested
