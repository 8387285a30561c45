"""GET /metrics: the Prometheus text of the whole app, and the guide's JSON summary."""

import time

import httpx
import pytest

from tests.integration.exported import EXPORT_WAIT_S, grown, scrape, series, settled_scrape, total

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ABANDONED = 3

# Every metric docs/observability.md documents, as Prometheus exposes it (Ray adds
# `ray_`, counters `_total`).
SERVE_METRICS = [
    "ray_llm_requests_total",
    "ray_llm_requests_in_flight",
    "ray_llm_e2e_request_latency_seconds_bucket",
    "ray_llm_time_to_first_token_seconds_bucket",
    "ray_llm_inter_token_latency_seconds_bucket",
    "ray_llm_prompt_tokens_total",
    "ray_llm_generation_tokens_total",
    "ray_llm_request_errors_total",
    "ray_llm_requests_aborted_total",
    "ray_llm_queue_wait_seconds_bucket",
    "ray_llm_engine_cancellations_total",
    "ray_llm_stream_tokens_per_chunk_bucket",
]
ENGINE_METRICS = [
    "ray_vllm_num_requests_running",
    "ray_vllm_num_requests_waiting",
    "ray_vllm_kv_cache_usage_perc",
    "ray_vllm_prefix_cache_queries_total",
    "ray_vllm_prefix_cache_hits_total",
    "ray_vllm_time_to_first_token_seconds_bucket",
    "ray_vllm_request_time_per_output_token_seconds_bucket",
    "ray_vllm_prompt_tokens_total",
    "ray_vllm_generation_tokens_total",
]


def small_load(http: httpx.Client, model: str) -> None:
    """Chat and completions, streamed or not, an error, an abort and a prefix-cache hit."""
    body = {"model": model, "messages": QUESTION, "max_tokens": 8, "temperature": 0}
    for stream in (False, True):
        assert http.post("/v1/chat/completions", json={**body, "stream": stream}).status_code == 200
    assert http.post("/v1/chat/completions", json={**body, "model": "nope"}).status_code == 404
    long_prompt = " ".join(f"word{i}" for i in range(400))
    for _ in range(2):
        completion = {"model": model, "prompt": long_prompt, "max_tokens": 2}
        assert http.post("/v1/completions", json=completion).status_code == 200
    abandoned = {"model": model, "prompt": "Once", "max_tokens": 500, "stream": True}
    for _ in range(ABANDONED):
        with http.stream("POST", "/v1/completions", json=abandoned) as response:
            next(response.iter_lines())


@pytest.fixture(scope="module")
def before(http: httpx.Client) -> str:
    """The counters before this module's load (earlier modules raised them already)."""
    return settled_scrape(http)


@pytest.fixture(scope="module")
def scrapes(before: str, http: httpx.Client, model: str) -> dict[str, str]:
    """The last scrape in which each documented metric appeared, after a small load.

    Gauges leave Ray's export one interval after their last update, so every metric is
    looked for across the scrapes of the minute after the load, not in a single one.
    """
    small_load(http, model)
    found: dict[str, str] = {}
    deadline = time.monotonic() + EXPORT_WAIT_S
    while len(found) < len(SERVE_METRICS + ENGINE_METRICS) and time.monotonic() < deadline:
        text = scrape(http)
        found |= {name: text for name in SERVE_METRICS + ENGINE_METRICS if series(text, name)}
        time.sleep(2)
    return found


@pytest.fixture(scope="module")
def exposition(scrapes: dict[str, str]) -> str:
    return scrapes["ray_llm_requests_total"]


@pytest.mark.parametrize("name", SERVE_METRICS + ENGINE_METRICS)
def test_documented_metric_is_exported(scrapes: dict[str, str], name: str) -> None:
    assert name in scrapes, f"{name} never appeared in {EXPORT_WAIT_S}s of scrapes"


def test_in_flight_gauge_stays_exported_while_idle(http: httpx.Client, scrapes: dict) -> None:
    time.sleep(25)  # over two export intervals without any request
    assert series(scrape(http), "ray_llm_requests_in_flight")


def test_requests_are_labelled_by_model_route_and_status(
    http: httpx.Client, before: str, scrapes: dict[str, str], model: str
) -> None:
    name, chat = "ray_llm_requests_total", "/v1/chat/completions"
    assert grown(http, before, name, 2, model=model, route=chat, status="200") == 2
    assert grown(http, before, name, 1, route=chat, status="404") == 1


def test_tokens_per_chunk_are_recorded_from_vllm_and_as_sent(scrapes: dict[str, str]) -> None:
    lines = series(
        scrapes["ray_llm_stream_tokens_per_chunk_bucket"], "ray_llm_stream_tokens_per_chunk_bucket"
    )
    assert any('stage="engine"' in line for line in lines)
    assert any('stage="sent"' in line for line in lines)


def test_errors_are_labelled_by_type(http: httpx.Client, before: str, scrapes: dict) -> None:
    name = "ray_llm_request_errors_total"
    assert grown(http, before, name, 1, error_type="invalid_request_error") == 1  # the 404


def test_abandoned_streams_count_as_aborted(http: httpx.Client, before: str, scrapes: dict) -> None:
    name = "ray_llm_requests_aborted_total"
    assert grown(http, before, name, ABANDONED, route="/v1/completions") == ABANDONED


def test_abandoned_streams_are_cancelled_in_the_engine(
    http: httpx.Client, before: str, scrapes: dict
) -> None:
    # Counted by the LLMServer replica when its generator is cancelled mid-stream.
    name = "ray_llm_engine_cancellations_total"
    assert grown(http, before, name, ABANDONED) == ABANDONED


def test_a_client_that_leaves_is_no_server_error(
    http: httpx.Client, before: str, scrapes: dict
) -> None:
    name = "ray_llm_request_errors_total"
    grown(http, before, "ray_llm_requests_aborted_total", ABANDONED)  # the load is exported
    assert total(scrape(http), name, error_type="server_error") == total(
        before, name, error_type="server_error"
    )


def test_ray_serve_own_metrics_are_included(exposition: str) -> None:
    assert series(exposition, "ray_serve_num_http_requests_total") or series(
        exposition, "ray_serve_deployment_request_counter_total"
    )


def test_json_summary_has_the_guide_fields(http: httpx.Client, model: str) -> None:
    response = http.get("/metrics", headers={"Accept": "application/json"})
    assert response.status_code == 200
    data = response.json()
    assert data["model"] == model
    assert data["tensor_parallel_size"] == 1
    # No GPU here: GPU fields are null, the CPU KV cache is reported instead.
    assert data["gpu_name"] is None
    assert data["gpu_memory_allocated_gb"] is None and data["gpu_memory_reserved_gb"] is None
    assert data["accelerator"] == "cpu"
    assert data["cpu_kvcache_gib"] > 0
    assert data["kv_cache_tokens"] > data["max_model_len"] > 0
    assert data["healthy_replicas"] == 1
    assert data["in_flight"] == 0
    assert data["totals"]["requests"] > 0
    assert data["totals"]["generated_tokens"] > 0


def test_json_summary_by_query_parameter(http: httpx.Client) -> None:
    response = http.get("/metrics", params={"format": "json"})
    assert response.headers["content-type"].startswith("application/json")
    assert "kv_cache_tokens" in response.json()
