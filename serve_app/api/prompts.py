"""Oversized prompts refused before they cost: a prompt whose text alone needs more tokens than
the context holds is refused before vLLM renders or tokenizes it."""

import json
from collections.abc import Iterable
from typing import Any

from transformers import PreTrainedTokenizerBase

from serve_app.core.errors import context_length_exceeded


def max_token_chars(tokenizer: Any) -> int | None:
    """The most characters of text one token can stand for, where the tokenizer bounds it.

    Byte-level and byte-fallback BPE spell any text with vocabulary entries, never an unknown
    token, and an entry stands for at most as many characters as it has (byte-level entries
    have a character per byte). Other tokenizers can fold a run of unknown text into one
    token, as can added tokens that strip the whitespace around them: None, no bound; also
    for tokenizers without a `tokenizers` backend to read this from.
    """
    if not isinstance(tokenizer, PreTrainedTokenizerBase) or not tokenizer.is_fast:
        return None
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    # The pre-tokenizer is a ByteLevel or a Sequence that holds one (Llama 3).
    byte_level = '"ByteLevel"' in json.dumps(spec.get("pre_tokenizer"))
    stripping = any(t.lstrip or t.rstrip for t in tokenizer.added_tokens_decoder.values())
    if model["type"] != "BPE" or not (byte_level or model.get("byte_fallback")) or stripping:
        return None
    return max(map(len, tokenizer.get_vocab()))


class OversizeGuard:
    """Refuses texts with more characters than `max_model_len` tokens can cover."""

    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self._max_token_chars = max_token_chars(tokenizer)
        self._max_model_len = max_model_len

    def check(self, texts: Iterable[str], param: str) -> None:
        """Refuse `texts` (the prompt named `param`) if no context could hold them."""
        if self._max_token_chars is None:
            return
        chars = sum(map(len, texts))
        fewest = -(-chars // self._max_token_chars)
        if fewest >= self._max_model_len:
            raise context_length_exceeded(
                f"This model's maximum context length is {self._max_model_len} tokens, but the "
                f"prompt has {chars} characters, so at least {fewest} tokens.",
                param,
            )


def message_texts(messages: Iterable[Any]) -> Iterable[str]:
    """The text contents of chat messages (or Responses input items): strings and text parts."""
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    yield text


def prompt_texts(prompt: Any) -> Iterable[str]:
    """The text prompts of a completion request (token-id prompts have none)."""
    if isinstance(prompt, str):
        yield prompt
    elif isinstance(prompt, list):
        yield from (item for item in prompt if isinstance(item, str))


def request_texts(request: Any) -> tuple[list[str], str]:
    """The texts of a chat, completion or Responses request, and the parameter they are."""
    if hasattr(request, "messages"):
        return list(message_texts(request.messages)), "messages"
    if hasattr(request, "prompt"):
        return list(prompt_texts(request.prompt)), "prompt"
    items = request.input if isinstance(request.input, list) else [{"content": request.input}]
    return [*message_texts(items), request.instructions or ""], "input"
