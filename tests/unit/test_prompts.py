"""Context-length budgeting of prompts and completions; rendering off the event loop."""

import asyncio
import threading
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from deployments.errors import OpenAIError
from deployments.prompts import OffLoopRenderer, PromptRenderer, resolve_max_tokens


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> PromptRenderer:
    """A real renderer over a three-word tokenizer."""
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, "[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path: Path = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(path)
    return PromptRenderer(str(path))


def test_off_loop_renderer_tokenizes_on_its_own_thread(
    renderer: PromptRenderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    encode = renderer.encode

    def recording(text: str, add_special_tokens: bool = True) -> list[int]:
        threads.append(threading.current_thread().name)
        return encode(text, add_special_tokens)

    monkeypatch.setattr(renderer, "encode", recording)
    off_loop = OffLoopRenderer(renderer)

    async def twice() -> list[list[int]]:
        return [await off_loop.encode("hello world"), await off_loop.encode("world")]

    assert asyncio.run(twice()) == [[1, 2], [2]]
    assert len(threads) == 2
    assert threads[0] == threads[1] != threading.current_thread().name
    assert threads[0].startswith("tokenizer")


def test_off_loop_renderer_raises_the_renderers_errors(renderer: PromptRenderer) -> None:
    with pytest.raises(OpenAIError) as info:
        asyncio.run(OffLoopRenderer(renderer).decode([99]))
    assert (info.value.status_code, info.value.param) == (400, "tokens")


def test_requested_budget_that_fits_is_kept() -> None:
    assert resolve_max_tokens(10, 20, 100, "messages") == 20


def test_missing_budget_fills_the_rest_of_the_context() -> None:
    assert resolve_max_tokens(30, None, 100, "messages") == 70


def test_budget_beyond_the_context_names_max_tokens() -> None:
    with pytest.raises(OpenAIError) as info:
        resolve_max_tokens(90, 20, 100, "messages")
    assert (info.value.status_code, info.value.param) == (400, "max_tokens")
    assert info.value.code == "context_length_exceeded"
    assert "110 tokens" in info.value.message


def test_prompt_filling_the_context_names_the_prompt() -> None:
    with pytest.raises(OpenAIError) as info:
        resolve_max_tokens(100, None, 100, "prompt")
    assert (info.value.status_code, info.value.param) == (400, "prompt")
