"""OpenAI request schemas: what is accepted, what is refused, and the derived settings."""

import pytest
from pydantic import ValidationError

from serve_app.api.protocol import ChatCompletionRequest, CompletionRequest
from serve_app.api.serving.base import sampling_spec
from serve_app.core.payloads import SamplingSpec

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **fields})


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=5, max_completion_tokens=9).requested_max_tokens == 9
    assert chat(max_tokens=5).requested_max_tokens == 5
    assert chat().requested_max_tokens is None


def test_logprobs_flag_and_top_logprobs_give_the_alternatives_count() -> None:
    assert chat().num_logprobs is None
    assert chat(logprobs=True).num_logprobs == 0
    assert chat(logprobs=True, top_logprobs=4).num_logprobs == 4


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": []},
        {"top_logprobs": 2},
        {"stream_options": {"include_usage": True}},
        {"stop": ["a"] * 17},
        {"stop": [""]},
        {"n": 0},
        {"temperature": 2.1},
        {"top_p": 0.0},
        {"functions": []},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
    ],
)
def test_invalid_chat_requests_are_refused(fields: dict) -> None:
    with pytest.raises(ValidationError):
        chat(**fields)


@pytest.mark.parametrize("prompt", ["", [], [[]], [""], 3])
def test_invalid_completion_prompts_are_refused(prompt: object) -> None:
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": prompt})


@pytest.mark.parametrize("prompt", ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_completion_prompt_forms_are_accepted(prompt: object) -> None:
    assert CompletionRequest.model_validate({"model": "m", "prompt": prompt}).prompt == prompt


def test_text_parts_join_into_the_message_text() -> None:
    content = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    request = chat(messages=[{"role": "user", "content": content}])
    assert request.messages[0].text() == "ab"


def test_sampling_spec_uses_openai_defaults() -> None:
    spec = sampling_spec(chat(), max_tokens=10)
    assert spec == SamplingSpec(max_tokens=10)


def test_sampling_spec_carries_every_setting() -> None:
    request = chat(
        n=2,
        temperature=0.5,
        top_p=0.9,
        seed=3,
        stop="x",
        presence_penalty=0.1,
        frequency_penalty=0.2,
        logprobs=True,
        top_logprobs=3,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
        min_tokens=2,
        ignore_eos=True,
    )
    spec = sampling_spec(request, max_tokens=7)
    assert spec.model_dump() == {
        "max_tokens": 7,
        "n": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 3,
        "stop": ("x",),
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "logprobs": 3,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "min_tokens": 2,
        "ignore_eos": True,
    }
