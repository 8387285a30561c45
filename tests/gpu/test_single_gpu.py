"""The integration suite's essentials on one GPU, with the default model."""

from collections.abc import Iterator

import httpx
import openai
import pytest

from serve_app.core.constants import DEFAULT_MODEL_ID
from tests.gpu.conftest import QUESTION, ask_concurrently, deployed

GPU_ARGS = {"accelerator": "gpu", "engine_kwargs": {"gpu_memory_utilization": 0.3}}


@pytest.fixture(scope="module")
def base_url(ray_cluster: None) -> Iterator[str]:
    with deployed(GPU_ARGS) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_chat_answers_paris_with_usage_and_stats(base_url: str) -> None:
    body = {"model": DEFAULT_MODEL_ID, "messages": QUESTION, "max_tokens": 32, "temperature": 0}
    data = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60).json()
    assert "Paris" in data["choices"][0]["message"]["content"]
    assert data["usage"]["completion_tokens"] > 0
    assert data["vllm_stats"]["tokens_per_second"] > 0


def test_completion(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=DEFAULT_MODEL_ID, prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert "Paris" in completion.choices[0].text


def test_stream_matches_non_streamed(client: openai.OpenAI) -> None:
    kwargs = {"model": DEFAULT_MODEL_ID, "messages": QUESTION, "max_tokens": 24, "temperature": 0}
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = client.chat.completions.create(stream=True, **kwargs)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole


def test_concurrent_requests_all_answer(base_url: str) -> None:
    assert all("Paris" in answer for answer in ask_concurrently(base_url, 32))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "nope", "messages": QUESTION}, 404),
        ({"model": DEFAULT_MODEL_ID, "messages": QUESTION, "temperature": 7}, 400),
        ({"model": DEFAULT_MODEL_ID, "messages": QUESTION, "max_tokens": 10**8}, 400),
    ],
)
def test_errors(base_url: str, body: dict, status: int) -> None:
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_metrics_json_reports_the_gpu(base_url: str) -> None:
    data = httpx.get(f"{base_url}/metrics", params={"format": "json"}, timeout=30).json()
    assert data["accelerator"] == "gpu"
    assert "H100" in data["gpu_name"] or "H200" in data["gpu_name"]
    # NVML's "used" adds the CUDA contexts to what vLLM reserved (0.3 x total here).
    assert data["gpu_memory_reserved_gb"] > 0
    assert data["gpu_memory_reserved_gb"] < data["gpu_memory_allocated_gb"] < 0.5 * 150
    assert data["cpu_kvcache_gib"] is None


def test_health(base_url: str) -> None:
    body = httpx.get(f"{base_url}/health", timeout=30).json()
    assert body["status"] == "healthy" and body["tensor_parallel_size"] == 1
