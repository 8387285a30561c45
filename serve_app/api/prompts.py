"""Prompt rendering in the ingress: chat template and tokenization, then context-length checks."""

import asyncio
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from jinja2 import TemplateError
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from serve_app.api.protocol import ChatMessage, CompletionRequest
from serve_app.core.errors import invalid_request

# Templates know system/user/assistant; OpenAI's newer `developer` role is a system message.
_TEMPLATE_ROLES = {"developer": "system"}
_T = TypeVar("_T")


class PromptRenderer:
    """Turns OpenAI messages or prompts into the token ids the engine receives."""

    def __init__(self, tokenizer_path: str) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self._max_token_chars = max_token_chars(self._tokenizer)

    def chat(self, messages: Sequence[ChatMessage], max_model_len: int | None = None) -> list[int]:
        """Apply the model's chat template, ready for the assistant's answer.

        With `max_model_len`, a conversation too long for it is refused before tokenizing.
        """
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
        self._check_length(text, max_model_len, "messages")
        return self._tokenizer.encode(text, add_special_tokens=False)

    def completion(
        self, request: CompletionRequest, max_model_len: int | None = None
    ) -> list[list[int]]:
        """One token-id list per prompt of a text completion request (see `chat`)."""
        value = request.prompt
        if not isinstance(value, str) and all(isinstance(item, int) for item in value):
            return [list(value)]
        items = [value] if isinstance(value, str) else value
        for item in items:  # all checked before any is tokenized
            if isinstance(item, str):
                self._check_length(item, max_model_len, "prompt")
        return [self.encode(item) if isinstance(item, str) else list(item) for item in items]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, tokens: Sequence[int]) -> str:
        if any(t < 0 or t >= len(self._tokenizer) for t in tokens):
            raise invalid_request("A token id is outside the vocabulary.", "tokens")
        return self._tokenizer.decode(tokens)

    def _check_length(self, text: str, max_model_len: int | None, param: str) -> None:
        """Refuse a text that has more tokens than the context holds, without tokenizing it."""
        if max_model_len is None or self._max_token_chars is None:
            return
        fewest = -(-len(text) // self._max_token_chars)
        if fewest >= max_model_len:
            raise invalid_request(
                f"This model's maximum context length is {max_model_len} tokens, but the "
                f"prompt has {len(text)} characters, so at least {fewest} tokens.",
                param,
                "context_length_exceeded",
            )


def max_token_chars(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The most characters of text one token can stand for, where the tokenizer bounds it.

    Byte-level and byte-fallback BPE spell any text with vocabulary entries, never an unknown
    token, and an entry stands for at most as many characters as it has (byte-level entries
    have a character per byte). Other tokenizers can fold a run of unknown text into one
    token, as can added tokens that strip the whitespace around them: None, no bound; also
    for tokenizers without a `tokenizers` backend to read this from.
    """
    if not tokenizer.is_fast:
        return None
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    # The pre-tokenizer is a ByteLevel or a Sequence that holds one (Llama 3).
    byte_level = '"ByteLevel"' in json.dumps(spec.get("pre_tokenizer"))
    stripping = any(t.lstrip or t.rstrip for t in tokenizer.added_tokens_decoder.values())
    if model["type"] != "BPE" or not (byte_level or model.get("byte_fallback")) or stripping:
        return None
    return max(map(len, tokenizer.get_vocab()))


class OffLoopRenderer:
    """A PromptRenderer for an event loop: its work runs on a worker thread of its own.

    The ingress's loop relays every stream's chunks; the Rust tokenizer releases the GIL, so
    tokenizing a long prompt there does not hold up the other requests' chunks
    (`benchmarks/serving/loop_stall.py` measures the gaps). One thread, as in vLLM's API server: the
    tokenizer is never used from two threads at once.
    """

    def __init__(self, renderer: PromptRenderer) -> None:
        self._renderer = renderer
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")

    async def chat(
        self, messages: Sequence[ChatMessage], max_model_len: int | None = None
    ) -> list[int]:
        return await self._run(self._renderer.chat, messages, max_model_len)

    async def completion(self, request: CompletionRequest, max_model_len: int) -> list[list[int]]:
        return await self._run(self._renderer.completion, request, max_model_len)

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
