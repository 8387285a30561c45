"""An engine replica that dies: in-flight streams end with a clean 503 error event, /health
says 503 while no replica runs, and Serve brings a new replica up that answers again."""

import json

import httpx
import ray

from serve_app.core.constants import LLM_SERVER_DEPLOYMENT
from serve_app.runtime.readiness import wait_healthy

RECOVERY_TIMEOUT_S = 600
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


def wait_for_health(http: httpx.Client, status: int, timeout_s: float) -> dict:
    """/health's body once it answers `status`."""
    wait_healthy(str(http.base_url.join("/health")), timeout_s, status=status)
    return http.get("/health").json()


def test_engine_death_fails_streams_cleanly_and_recovers(http: httpx.Client, model: str) -> None:
    body = {
        "model": model,
        "prompt": "Once",
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: {")
        assert kill_llm_replicas() == 1
        events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "service_unavailable_error"

    down = wait_for_health(http, 503, timeout_s=60)
    assert down["status"] == "unhealthy" and down["healthy_replicas"] == 0

    up = wait_for_health(http, 200, timeout_s=RECOVERY_TIMEOUT_S)
    assert up["healthy_replicas"] == 1
    answer = http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": QUESTION, "max_tokens": 24, "temperature": 0},
    )
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]
