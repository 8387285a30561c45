"""Faults of an LLM-server replica on the real stack: its actor killed, its vLLM engine process
killed (as an OOM kill or a CUDA fault would), its engine hung (the process stopped). Every
time: streams in flight end with a 503 error event then `[DONE]`, `/health` answers 503 while
no replica runs, new requests get a 503 with `Retry-After` meanwhile, and Serve's
replacement replica answers again. Times to detection and recovery are printed (`-s`)."""

import json
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest
import ray
from ray.serve.schema import ServeDeploySchema

from serve_app.core.constants import LLM_SERVER_DEPLOYMENT
from serve_app.runtime.readiness import wait_healthy
from serve_app.runtime.runner import wait_until_running
from tests.integration.conftest import redeploy_llm_server
from tests.integration.figures import Figures

RECOVERY_TIMEOUT_S = 600
# From the fault to /health 503: the replica fails at once, exits 0.5 s later, and Serve's
# next health check (every 1 s) sees it gone; ingress replicas poll the controller every 0.5 s.
# About 2-3 s; the bound leaves room for a loaded 2-core machine.
DETECTION_BOUND_S = 10.0
STALL_TIMEOUT_S = 3.0
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def kill_llm_replicas() -> int:
    names = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if f"#{LLM_SERVER_DEPLOYMENT}#" in actor["name"]
    ]
    for name in names:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return len(names)


def engine_processes() -> list[psutil.Process]:
    """The vLLM engine-core processes of this session's LLM-server replicas."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if "EngineCore" not in " ".join(process.info["cmdline"] or ()):
            continue
        with_parents = [process, *process.parents()]
        if any(LLM_SERVER_DEPLOYMENT in " ".join(p.cmdline()) for p in with_parents):
            found.append(process)
    return found


def signal_engines(signum: int) -> Callable[[], int]:
    def send() -> int:
        processes = engine_processes()
        for process in processes:
            process.send_signal(signum)
        return len(processes)

    return send


def stream_through_fault(http: httpx.Client, model: str, fault: Callable[[], int]) -> dict:
    """Start a long stream, cause `fault` after its first event; the stream's final error
    (checked to be followed by `[DONE]`), with the seconds from the fault to its end."""
    body = {"model": model, "prompt": "Once", "max_tokens": 2000, "ignore_eos": True,
            "stream": True}  # fmt: skip
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        lines = response.iter_lines()
        assert next(lines).startswith("data: {")
        assert fault() == 1
        faulted = time.monotonic()
        events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "service_unavailable_error"
    return error | {"seconds": time.monotonic() - faulted}


def health_503(http: httpx.Client, since: float) -> httpx.Response:
    """The first /health answer that is a 503, asked every 0.1 s."""
    while time.monotonic() - since < DETECTION_BOUND_S:
        response = http.get("/health")
        if response.status_code == 503:
            return response
        time.sleep(0.1)
    raise AssertionError(f"/health still answered 200 {DETECTION_BOUND_S} s after the fault")


def recover(http: httpx.Client, model: str, since: float, fault: str, figures: Figures) -> None:
    """/health says 503 soon, generation gets a 503 with Retry-After meanwhile, and the
    replacement replica answers."""
    down = health_503(http, since)
    detected = time.monotonic() - since
    assert down.json()["healthy_replicas"] == 0 and down.headers["retry-after"] == "1"
    refused = http.post(
        "/v1/chat/completions", json={"model": model, "messages": QUESTION, "max_tokens": 4}
    )
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "service_unavailable_error"

    wait_healthy(str(http.base_url.join("/health")), RECOVERY_TIMEOUT_S)
    recovered = time.monotonic() - since
    answer = http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": QUESTION, "max_tokens": 24, "temperature": 0},
    )
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]
    figures.record(
        fault, health_503_after_s=round(detected, 1), answering_after_s=round(recovered, 1)
    )


@pytest.fixture(autouse=True)
def healthy_after(http: httpx.Client, model: str) -> Iterator[None]:
    """After each fault, however its test ended, the app answers again, or this test's
    teardown fails (not every later module, with misleading failures)."""
    yield
    wait_healthy(str(http.base_url.join("/health")), RECOVERY_TIMEOUT_S)
    answer = http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": QUESTION, "max_tokens": 4, "temperature": 0},
    )
    assert answer.status_code == 200, answer.text


def test_a_killed_replica_actor_fails_streams_cleanly_and_is_replaced(
    http: httpx.Client, model: str, figures: Figures
) -> None:
    error = stream_through_fault(http, model, kill_llm_replicas)
    recover(http, model, time.monotonic() - error["seconds"], "replica actor killed", figures)


def test_a_dead_engine_process_fails_streams_at_once_and_its_replica_is_replaced(
    http: httpx.Client, model: str, figures: Figures
) -> None:
    error = stream_through_fault(http, model, signal_engines(signal.SIGKILL))
    assert error["code"] == "engine_failed" and "died" in error["message"]
    assert error["seconds"] < DETECTION_BOUND_S
    recover(http, model, time.monotonic() - error["seconds"], "engine process killed", figures)


@pytest.fixture
def short_stall_timeout(deploy_config: ServeDeploySchema) -> Iterator[None]:
    redeploy_llm_server(deploy_config, user_config={"engine_stall_timeout_s": STALL_TIMEOUT_S})
    wait_until_running([app.name for app in deploy_config.applications], RECOVERY_TIMEOUT_S)
    yield
    redeploy_llm_server(deploy_config)  # the shipped config again
    wait_until_running([app.name for app in deploy_config.applications], RECOVERY_TIMEOUT_S)


def test_a_hung_engine_is_killed_after_the_stall_timeout_and_its_replica_replaced(
    short_stall_timeout: None, http: httpx.Client, model: str, figures: Figures
) -> None:
    error = stream_through_fault(http, model, signal_engines(signal.SIGSTOP))
    assert error["code"] == "engine_failed" and "stalled" in error["message"]
    assert STALL_TIMEOUT_S <= error["seconds"] < STALL_TIMEOUT_S + DETECTION_BOUND_S
    recover(http, model, time.monotonic() - error["seconds"], "engine hung (SIGSTOP)", figures)
