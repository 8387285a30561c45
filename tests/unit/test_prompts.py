"""Oversized prompts refused before they cost: the characters one token can cover, and the
texts of chat, completion and Responses requests that are checked against the context."""

from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from serve_app.api.prompts import (
    OversizeGuard,
    max_token_chars,
    message_texts,
    prompt_texts,
    request_texts,
)
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
def word_level() -> PreTrainedTokenizerFast:
    """A three-word tokenizer: any unknown word is one [UNK]."""
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, "[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


@pytest.fixture(scope="module")
def byte_level() -> PreTrainedTokenizerFast:
    """A small byte-level BPE (the kind of Llama 3, Qwen, SmolLM2)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(["hello world, hello there"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def test_byte_level_bpe_bounds_the_characters_a_token_covers(
    byte_level: PreTrainedTokenizerFast,
) -> None:
    longest = max_token_chars(byte_level)
    assert longest == max(len(entry) for entry in byte_level.get_vocab())
    for text in SAMPLES:
        assert len(byte_level.encode(text)) * longest >= len(text), text


def test_a_tokenizer_with_an_unknown_token_has_no_bound(
    word_level: PreTrainedTokenizerFast,
) -> None:
    # WordLevel maps any unknown word, however long, to one [UNK].
    assert word_level.encode("x" * 1000) == [0]
    assert max_token_chars(word_level) is None
    OversizeGuard(word_level, max_model_len=2).check(["x" * 1000], "prompt")  # not refused


def test_a_tokenizer_without_a_rust_backend_has_no_bound() -> None:
    assert max_token_chars(SimpleNamespace(is_fast=False)) is None


def test_a_prompt_that_cannot_fit_is_refused_naming_its_parameter(
    byte_level: PreTrainedTokenizerFast,
) -> None:
    longest = max_token_chars(byte_level)
    assert longest is not None
    guard = OversizeGuard(byte_level, max_model_len=10)
    with pytest.raises(OpenAIError) as info:
        guard.check(["hello", "x" * (longest * 10)], "prompt")
    assert (info.value.status_code, info.value.param) == (400, "prompt")
    assert info.value.code == "context_length_exceeded"
    assert f"{longest * 10 + 5} characters" in info.value.message


def test_texts_within_the_bound_pass(byte_level: PreTrainedTokenizerFast) -> None:
    # 300 characters can be as few as ceil(300 / longest) tokens: vLLM counts them exactly.
    OversizeGuard(byte_level, max_model_len=100).check(["hello " * 50], "messages")


def test_the_texts_of_messages_are_their_string_contents_and_text_parts() -> None:
    messages = [
        {"role": "system", "content": "abc"},
        {"role": "user", "content": [{"type": "text", "text": "de"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]},
        {"role": "tool", "content": "f", "tool_call_id": "x"},
    ]
    assert list(message_texts(messages)) == ["abc", "de", "f"]


def test_the_texts_of_a_completion_prompt_skip_token_ids() -> None:
    assert list(prompt_texts("abc")) == ["abc"]
    assert list(prompt_texts(["a", "bc"])) == ["a", "bc"]
    assert list(prompt_texts([1, 2, 3])) == []
    assert list(prompt_texts([[1, 2], [3]])) == []


def test_the_texts_of_each_kind_of_request_name_their_parameter() -> None:
    chat = SimpleNamespace(messages=[{"role": "user", "content": "abc"}])
    assert request_texts(chat) == (["abc"], "messages")
    assert request_texts(SimpleNamespace(prompt=["a", "bc"])) == (["a", "bc"], "prompt")
    responses = SimpleNamespace(input="abc", instructions="be brief")
    assert request_texts(responses) == (["abc", "be brief"], "input")
    items = SimpleNamespace(input=[{"role": "user", "content": "de"}], instructions=None)
    assert request_texts(items) == (["de", ""], "input")
