"""POST /v1/chat/completions against the real stack, through raw HTTP and the openai client."""

import httpx
import openai
import pytest

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_guide_request_names_paris_with_usage_and_vllm_stats(
    http: httpx.Client, model: str
) -> None:
    body = {"model": model, "messages": QUESTION, "max_tokens": 32, "temperature": 0}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    choice = data["choices"][0]
    assert "Paris" in choice["message"]["content"]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["prompt_tokens"] > 0 < usage["completion_tokens"] <= 32
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    stats = data["vllm_stats"]
    assert stats["inference_time_seconds"] > 0
    assert stats["tokens_per_second"] > 0
    assert 0 < stats["time_to_first_token_seconds"] <= stats["inference_time_seconds"]


def test_openai_client_chat(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=QUESTION, max_completion_tokens=32, temperature=0
    )
    assert "Paris" in completion.choices[0].message.content
    assert completion.usage.completion_tokens > 0


def test_stream_concatenates_to_the_non_streamed_answer(client: openai.OpenAI, model: str) -> None:
    kwargs = {"model": model, "messages": QUESTION, "max_tokens": 24, "temperature": 0}
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.usage is None for c in chunks)


def test_stream_include_usage_ends_with_a_usage_chunk(client: openai.OpenAI, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=QUESTION,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    generated = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    assert chunks[-1].usage.completion_tokens >= generated > 0
    assert chunks[-1].usage.prompt_tokens > 0


def test_max_tokens_reached_finishes_with_length(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=3, temperature=0
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_stop_sequence_ends_the_answer_before_it(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=32, temperature=0, stop=["Paris"]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert "Paris" not in choice.message.content
    assert choice.message.content.startswith("The capital of France is")


def test_n_returns_independent_choices(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=8, temperature=1.0, n=3, seed=7
    )
    assert sorted(c.index for c in completion.choices) == [0, 1, 2]
    assert all(c.message.content for c in completion.choices)
    # Usage counts every choice's tokens, the prompt once.
    assert 3 <= completion.usage.completion_tokens <= 3 * 8


def test_same_seed_gives_the_same_sample(client: openai.OpenAI, model: str) -> None:
    kwargs = {"model": model, "messages": QUESTION, "max_tokens": 12, "temperature": 1.0}
    first = client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content
    again = client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content
    assert first == again


def test_logprobs_with_top_alternatives(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    content = completion.choices[0].logprobs.content
    assert len(content) == completion.usage.completion_tokens
    for token in content:
        assert token.logprob <= 0
        assert len(token.top_logprobs) == 3
        # Greedy decoding picks the most likely token.
        assert token.token == token.top_logprobs[0].token
    assert "".join(t.token for t in content) == completion.choices[0].message.content


def test_system_and_developer_messages_and_text_parts(client: openai.OpenAI, model: str) -> None:
    messages = [
        {"role": "developer", "content": "Answer in one short sentence."},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
    ]
    completion = client.chat.completions.create(
        model=model, messages=messages, max_tokens=32, temperature=0
    )
    assert "Paris" in completion.choices[0].message.content


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_penalties_are_accepted(client: openai.OpenAI, model: str, penalty: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=4, top_p=0.9, user="tester", **{penalty: 1.5}
    )
    assert completion.usage.completion_tokens > 0
