"""Context-length budgeting of prompts and completions; rendering off the event loop."""

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from serve_app.api.prompts import (
    OffLoopRenderer,
    PromptRenderer,
    max_token_chars,
    resolve_max_tokens,
)
from serve_app.api.protocol import ChatMessage, CompletionRequest
from serve_app.core.errors import OpenAIError

# Texts for the byte-level tokenizer: seen words, unseen ones, long runs, accents, emoji.
SAMPLES = [
    "hello world",
    "hello" * 40,
    " " * 200,
    "world hello\n\n\tworld",
    "zzz qqq 12345 !!!",
    "héllo wörld, ça va? 東京 🙂🙂",
]


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> PromptRenderer:
    """A real renderer over a three-word tokenizer."""
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, "[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path: Path = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(path)
    return PromptRenderer(str(path))


@pytest.fixture(scope="module")
def bpe_renderer(tmp_path_factory: pytest.TempPathFactory) -> PromptRenderer:
    """A real renderer over a small byte-level BPE (the kind of Llama 3, Qwen, SmolLM2)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(["hello world, hello there"] * 20, trainer)
    path: Path = tmp_path_factory.mktemp("bpe")
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, chat_template=template)
    fast.save_pretrained(path)
    return PromptRenderer(str(path))


def _refused_unread(renderer: PromptRenderer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any tokenization fail the test."""

    def refuse(*_: object, **__: object) -> list[int]:
        raise AssertionError("tokenized a prompt that cannot fit")

    monkeypatch.setattr(renderer._tokenizer, "encode", refuse)


def test_byte_level_bpe_bounds_the_characters_a_token_covers(
    bpe_renderer: PromptRenderer,
) -> None:
    tokenizer = bpe_renderer._tokenizer
    longest = max_token_chars(tokenizer)
    assert longest == max(len(entry) for entry in tokenizer.get_vocab())
    for text in SAMPLES:
        assert len(tokenizer.encode(text)) * longest >= len(text), text


def test_a_tokenizer_with_an_unknown_token_has_no_bound(renderer: PromptRenderer) -> None:
    # WordLevel maps any unknown word, however long, to one [UNK].
    assert max_token_chars(renderer._tokenizer) is None
    assert renderer.completion(CompletionRequest(model="m", prompt="x" * 1000), 2) == [[0]]


def test_a_tokenizer_without_a_rust_backend_has_no_bound() -> None:
    slow = SimpleNamespace(is_fast=False)
    assert max_token_chars(slow) is None  # type: ignore[arg-type]


def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(
    bpe_renderer: PromptRenderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    longest = max_token_chars(bpe_renderer._tokenizer)
    assert longest is not None
    _refused_unread(bpe_renderer, monkeypatch)
    request = CompletionRequest(model="m", prompt=["hello", "x" * (longest * 10)])
    with pytest.raises(OpenAIError) as info:
        bpe_renderer.completion(request, 10)
    assert (info.value.status_code, info.value.param) == (400, "prompt")
    assert info.value.code == "context_length_exceeded"
    assert f"{longest * 10} characters" in info.value.message


def test_a_conversation_that_cannot_fit_is_refused_naming_messages(
    bpe_renderer: PromptRenderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refused_unread(bpe_renderer, monkeypatch)
    messages = [ChatMessage(role="user", content="hello " * 1000)]
    with pytest.raises(OpenAIError) as info:
        bpe_renderer.chat(messages, 100)
    assert (info.value.param, info.value.code) == ("messages", "context_length_exceeded")


def test_prompts_within_the_bound_are_tokenized(bpe_renderer: PromptRenderer) -> None:
    # 50 characters can be as few as ceil(50 / longest) tokens: not refused here; the exact
    # count is checked against the context once known (resolve_max_tokens).
    prompts = bpe_renderer.completion(CompletionRequest(model="m", prompt="hello " * 50), 100)
    assert len(prompts) == 1 and prompts[0]
    messages = [ChatMessage(role="user", content="hello world")]
    assert bpe_renderer.chat(messages, 100) == bpe_renderer.chat(messages)


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
