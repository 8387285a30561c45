"""POST /v1/completions: text and token prompts, batches of prompts, streaming, logprobs."""

import openai
from transformers import AutoTokenizer

from serve_app.core.default_model import prepare_default_model

PROMPT = "The capital of France is"


def test_completion_continues_the_prompt(client: openai.OpenAI, model: str) -> None:
    completion = client.completions.create(model=model, prompt=PROMPT, max_tokens=4, temperature=0)
    choice = completion.choices[0]
    assert "Paris" in choice.text
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 4
    assert completion.object == "text_completion"


def test_default_max_tokens_is_sixteen(client: openai.OpenAI, model: str) -> None:
    completion = client.completions.create(
        model=model,
        prompt="Count: one, two, three,",
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert completion.usage.completion_tokens == 16


def test_completion_stream_matches_non_streamed(client: openai.OpenAI, model: str) -> None:
    kwargs = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole


def test_batch_of_prompts_returns_n_choices_per_prompt(client: openai.OpenAI, model: str) -> None:
    prompts = [PROMPT, "The capital of Germany is"]
    completion = client.completions.create(
        model=model, prompt=prompts, max_tokens=4, temperature=0.01, n=2, seed=1
    )
    by_index = {c.index: c.text for c in completion.choices}
    assert sorted(by_index) == [0, 1, 2, 3]
    # Near-greedy sampling: each prompt's two choices answer its own question.
    assert "Paris" in by_index[0] and "Paris" in by_index[1]
    assert "Berlin" in by_index[2] and "Berlin" in by_index[3]
    assert completion.usage.completion_tokens == 4 * 4


def test_streamed_batch_reindexes_choices(client: openai.OpenAI, model: str) -> None:
    prompts = [PROMPT, "The capital of Germany is"]
    chunks = list(
        client.completions.create(
            model=model, prompt=prompts, max_tokens=4, temperature=0, stream=True
        )
    )
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert "Paris" in texts[0] and "Berlin" in texts[1]


def test_token_id_prompt_answers_like_its_text(client: openai.OpenAI, model: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(prepare_default_model())
    ids = tokenizer.encode(PROMPT)
    kwargs = {"model": model, "max_tokens": 6, "temperature": 0}
    by_text = client.completions.create(prompt=PROMPT, **kwargs)
    by_ids = client.completions.create(prompt=ids, **kwargs)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens == len(ids)


def test_completion_logprobs_align_with_text(client: openai.OpenAI, model: str) -> None:
    completion = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2
    )
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 5
    assert "".join(logprobs.tokens) == completion.choices[0].text
    assert logprobs.text_offset[0] == 0
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
