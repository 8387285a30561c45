"""Many requests at once: all answered, bad ones isolated, a disconnect aborts its generation."""

import asyncio

import httpx
import openai

from tests.integration.exported import grown, settled_scrape

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


async def _ask(client: openai.AsyncOpenAI, model: str, stream: bool) -> str:
    kwargs = {"model": model, "messages": QUESTION, "max_tokens": 24, "temperature": 0}
    if not stream:
        return (await client.chat.completions.create(**kwargs)).choices[0].message.content
    parts = []
    async for chunk in await client.chat.completions.create(stream=True, **kwargs):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
    return "".join(parts)


def test_sixteen_concurrent_requests_all_answer_correctly(base_url: str, model: str) -> None:
    async def main() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300
        ) as client:
            return await asyncio.gather(*(_ask(client, model, i % 2 == 0) for i in range(16)))

    answers = asyncio.run(main())
    assert len(answers) == 16
    assert all("Paris" in answer for answer in answers), answers
    # Greedy decoding is deterministic however the requests were batched.
    assert len(set(answers)) == 1


def test_bad_requests_do_not_disturb_concurrent_good_ones(base_url: str, model: str) -> None:
    bad_bodies = [
        {"model": "nope", "messages": QUESTION},
        {"model": model, "messages": QUESTION, "temperature": 9},
        {"model": model, "messages": QUESTION, "max_tokens": 10_000_000},
        {"model": model, "prompt": [10_000_000]},
    ]

    async def main() -> tuple[list[str], list[int]]:
        async with (
            openai.AsyncOpenAI(
                base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300
            ) as client,
            httpx.AsyncClient(base_url=base_url, timeout=300) as http,
        ):
            good = [_ask(client, model, stream=True) for _ in range(6)]
            bad = [
                http.post("/v1/completions" if "prompt" in b else "/v1/chat/completions", json=b)
                for b in bad_bodies
            ]
            results = await asyncio.gather(*good, *bad)
            return list(results[:6]), [r.status_code for r in results[6:]]

    answers, statuses = asyncio.run(main())
    assert all("Paris" in answer for answer in answers)
    assert statuses == [404, 400, 400, 400]


def test_client_disconnect_mid_stream_aborts_it_in_the_engine_and_leaves_the_service_healthy(
    http: httpx.Client, base_url: str, model: str
) -> None:
    body = {
        "model": model,
        "prompt": "Once upon a time",
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    before = settled_scrape(http)
    with httpx.Client(base_url=base_url, timeout=120) as client:
        with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            received = [next(lines) for _ in range(3)]
        assert received[0].startswith("data: ")
    # The LLM server's generator was cancelled, so vLLM's generate aborted the request.
    assert grown(http, before, "ray_llm_engine_cancellations_total", 1) == 1
    completion = http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": QUESTION, "max_tokens": 24, "temperature": 0},
    )
    assert "Paris" in completion.json()["choices"][0]["message"]["content"]
