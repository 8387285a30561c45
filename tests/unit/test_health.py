"""ServiceHealth: the controller is asked only when an answer is needed (it costs the ingress
milliseconds of CPU), and generation is refused only on a fresh count of zero."""

import asyncio
import json
from typing import Any

import pytest

from serve_app.api import health
from serve_app.api.health import ServiceHealth
from serve_app.core.config import AppConfig
from serve_app.core.errors import OpenAIError


class Controller:
    """Stands in for `serve.status()`: says `running`, counts the questions."""

    def __init__(self, running: int) -> None:
        self.running = running
        self.asked = 0

    def ask(self, *_: Any) -> int:
        self.asked += 1
        return self.running


@pytest.fixture
def controller(monkeypatch: pytest.MonkeyPatch) -> Controller:
    controller = Controller(running=1)
    monkeypatch.setattr(ServiceHealth, "_ask_controller", controller.ask)
    monkeypatch.setattr(health, "HEALTH_POLL_SECONDS", 0.05)
    monkeypatch.setattr(health, "REPLICA_FAILURE_WATCH_SECONDS", 0.2)
    return controller


def test_while_replicas_run_requests_never_ask_the_controller(controller: Controller) -> None:
    async def scenario() -> int:
        service = ServiceHealth("llm", AppConfig())
        assert (await service.response()).status_code == 200
        for _ in range(100):
            await service.require_replica()
        return controller.asked

    assert asyncio.run(scenario()) == 1  # the /health call only


def test_after_a_replica_failed_the_count_is_followed_until_one_runs_again(
    controller: Controller,
) -> None:
    async def scenario() -> tuple[int, int, int]:
        service = ServiceHealth("llm", AppConfig())
        await service.require_replica()  # never asked: nothing known, nothing refused
        service.replica_failed()
        controller.running = 0
        await asyncio.sleep(0.15)
        with pytest.raises(OpenAIError) as refused:
            await service.require_replica()
        assert refused.value.status_code == 503 and refused.value.headers() == {"Retry-After": "1"}
        down = (await service.response()).status_code
        controller.running = 1
        await asyncio.sleep(0.4)  # the watch sees it running and stops after its window
        await service.require_replica()
        asked = controller.asked
        await asyncio.sleep(0.3)
        return down, asked, controller.asked

    down, asked, later = asyncio.run(scenario())
    assert down == 503
    assert asked >= 3
    assert later == asked  # the watch ended


def test_after_a_failure_each_request_asks_afresh_and_shares_one_question(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "HEALTH_POLL_SECONDS", 10.0)  # the watch's polls never help

    async def scenario() -> tuple[int, int]:
        service = ServiceHealth("llm", AppConfig())
        assert (await service.response()).status_code == 200  # a count of 1, now cached
        service.replica_failed()
        await asyncio.sleep(0)  # the watch asks once, still 1
        controller.running = 0
        asked = controller.asked
        results = await asyncio.gather(
            *(service.require_replica() for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, OpenAIError) and r.status_code == 503 for r in results)
        return asked, controller.asked

    before, after = asyncio.run(scenario())
    assert 1 <= after - before <= 2  # five requests, one or two questions


def test_while_draining_generation_and_health_get_a_503_shutting_down(
    controller: Controller,
) -> None:
    async def scenario() -> tuple[OpenAIError, Any, Any]:
        service = ServiceHealth("llm", AppConfig())
        service.drain(True)
        with pytest.raises(OpenAIError) as refused:
            await service.require_replica()
        draining = await service.response()
        service.drain(False)
        await service.require_replica()
        return refused.value, draining, await service.response()

    refused, draining, after = asyncio.run(scenario())
    assert (refused.status_code, refused.code) == (503, "shutting_down")
    assert refused.headers() == {"Retry-After": "1"}
    assert draining.status_code == 503 and draining.headers["retry-after"] == "1"
    assert json.loads(draining.body)["status"] == "draining"
    assert after.status_code == 200
