"""An engine that dies or hangs, on the fake engine: the LLM server fails its requests with a
503 `engine_failed` (streams: an error event, then `[DONE]`), fails its health check, and
exits so that Serve replaces it; the ingress sends a request that failed before its first
output to another replica."""

import asyncio
import itertools
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from serve_app.api import llm_client
from serve_app.api.llm_client import LLMServerClient
from serve_app.core.constants import FAILED_REPLICA_EXIT_DELAY_S
from serve_app.core.errors import OpenAIError, engine_failed, service_unavailable
from serve_app.engine.watchdog import EngineWatchdog
from serve_app.vllm_compat import EngineRequest, SamplingParams
from tests.fake_engine import InProcessHandle, start_llm_server
from tests.unit.test_serving import (
    app_config,
    body,
    completion,
    expected_text,
    http_request,
    run,
    stack,
)

pytestmark = pytest.mark.usefixtures("cpu_kv_cache_env")


def completion_request() -> EngineRequest:
    return EngineRequest({"prompt_token_ids": [11]}, SamplingParams(max_tokens=4), "r")


def test_a_dying_engine_ends_its_streams_with_a_503_fails_health_and_exits(model: Path) -> None:
    async def scenario() -> tuple[list[Any], OpenAIError, BaseException | None, list[bool]]:
        exits: list[bool] = []
        s = await stack(model, exits=exits, die_at_step=2)
        request = completion(s.name, prompt=[15, 16], max_tokens=8, stream=True)
        streamed = await body(await s.api.completion(request, http_request()))
        with pytest.raises(OpenAIError) as later:
            await s.api.completion(completion(s.name, prompt=[15], max_tokens=4), http_request())
        try:
            await s.server.check_health()
            health = None
        except Exception as exc:
            health = exc
        assert exits == []  # its error events leave first
        await asyncio.sleep(FAILED_REPLICA_EXIT_DELAY_S + 0.2)
        return streamed, later.value, health, exits

    streamed, later, health, exits = run(scenario())
    text = "".join(c["text"] for event in streamed[:-2] for c in event["choices"])
    assert text == expected_text([15, 16], 0, 2)
    error = streamed[-2]["error"]
    assert (error["type"], error["code"]) == ("service_unavailable_error", "engine_failed")
    assert "died" in error["message"]
    assert streamed[-1] == "[DONE]"
    assert (later.status_code, later.code, later.retry_after_s) == (503, "engine_failed", 1)
    assert isinstance(health, RuntimeError)
    assert exits == [True]


def test_a_stalled_engine_is_killed_and_its_streams_end_with_a_503(model: Path) -> None:
    stall_s = 0.3

    async def scenario() -> tuple[list[Any], float, bool, list[bool]]:
        exits: list[bool] = []
        config = app_config(model, engine_stall_timeout_s=stall_s)
        s = await stack(model, config=config, exits=exits, hang_at_step=3)
        request = completion(s.name, prompt=[15, 16], max_tokens=8, stream=True)
        started = asyncio.get_running_loop().time()
        response = await s.api.completion(request, http_request())
        streamed = await asyncio.wait_for(body(response), stall_s + 5.0)  # not forever
        took = asyncio.get_running_loop().time() - started
        await asyncio.sleep(FAILED_REPLICA_EXIT_DELAY_S + 0.2)
        return streamed, took, s.fake.errored, exits

    streamed, took, killed, exits = run(scenario())
    assert expected_text([15, 16], 0, 3) == "".join(
        c["text"] for event in streamed[:-2] for c in event["choices"]
    )
    error = streamed[-2]["error"]
    assert (error["code"], "stalled" in error["message"]) == ("engine_failed", True)
    assert streamed[-1] == "[DONE]"
    assert stall_s < took < stall_s + 1.0
    assert killed and exits == [True]


def test_an_idle_engine_never_stalls_and_a_live_setting_turns_the_watchdog_off(
    model: Path,
) -> None:
    async def scenario() -> tuple[bool, list[bool]]:
        exits: list[bool] = []
        config = app_config(model, engine_stall_timeout_s=0.1)
        server, fake = await start_llm_server(config, exits, hang_at_step=0)
        await asyncio.sleep(0.5)  # idle: nothing in flight
        server.reconfigure({"engine_stall_timeout_s": None})
        outputs = server.generate(completion_request())
        waiting = asyncio.ensure_future(anext(outputs))
        await asyncio.sleep(0.5)  # hung, but the watchdog is off
        waiting.cancel()
        return fake.errored, exits

    assert run(scenario()) == (False, [])


def test_an_engine_shut_down_because_serve_stops_the_replica_is_no_failure(
    model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> list[bool]:
        exits: list[bool] = []
        server, fake = await start_llm_server(app_config(model), exits)
        server.__del__()  # what Serve calls when it stops the replica
        fake.die()  # the engine process is gone, as after `shutdown()`
        await asyncio.sleep(1.0)  # past the supervisor's check and the failed-replica exit
        return exits

    assert run(scenario()) == []
    assert "The engine died" not in caplog.text


class Replicas(InProcessHandle):
    """A Serve handle over several in-process LLMServers, taken in turn for `generate`."""

    def __init__(self, servers: list[Any]) -> None:
        super().__init__(servers[0])
        self._turns = itertools.cycle(servers)
        self.tried = 0

    async def _counted_generate(self, request: Any) -> AsyncIterator[Any]:
        self.tried += 1
        async for output in next(self._turns).generate(request):
            yield output


def test_a_request_whose_replica_failed_before_its_first_output_goes_to_another(
    model: Path,
) -> None:
    async def scenario() -> tuple[str, int]:
        config = app_config(model)
        dead, dead_fake = await start_llm_server(config)
        live, _ = await start_llm_server(config)
        dead_fake.die()
        handle = Replicas([dead, live])
        client = LLMServerClient(handle, "grpc")  # type: ignore[arg-type]
        params = completion_request()
        outputs = [output async for output in client.generate(params.prompt, params.params, "r")]
        return "".join(o.outputs[0].text for o in outputs), handle.tried

    text, tried = run(scenario())
    assert text == expected_text([11], 0, 4)
    assert tried == 2


def test_a_replica_that_keeps_failing_is_retried_twice_then_answers_503(model: Path) -> None:
    async def scenario() -> tuple[OpenAIError, int]:
        dead, dead_fake = await start_llm_server(app_config(model))
        dead_fake.die()
        handle = Replicas([dead])
        client = LLMServerClient(handle, "grpc")  # type: ignore[arg-type]
        params = completion_request()
        with pytest.raises(OpenAIError) as raised:
            async for _ in client.generate(params.prompt, params.params, "r"):
                pass
        return raised.value, handle.tried

    error, tried = run(scenario())
    assert (error.status_code, error.code, tried) == (503, "engine_failed", 3)


def test_every_503_asks_the_client_to_retry_after_a_second_even_across_ray() -> None:
    for error in (service_unavailable("busy"), engine_failed("died")):
        crossed = pickle.loads(pickle.dumps(error))
        assert crossed.headers() == {"Retry-After": "1"}
        assert (crossed.code, crossed.status_code) == (error.code, 503)
    assert OpenAIError("bad request").headers() == {}


def test_the_watchdog_counts_silence_only_while_requests_are_in_flight() -> None:
    now = [0.0]
    watchdog = EngineWatchdog(10.0, clock=lambda: now[0])
    now[0] = 100.0
    assert not watchdog.stalled()  # idle for long: not stalled
    watchdog.started()
    now[0] = 109.0
    watchdog.started()  # a second request does not restart the clock
    assert not watchdog.stalled()
    now[0] = 110.5
    assert watchdog.stalled()
    watchdog.progressed()
    assert not watchdog.stalled()
    watchdog.finished()
    watchdog.finished()
    now[0] = 200.0
    assert not watchdog.stalled()
    watchdog.stall_timeout_s = None
    watchdog.started()
    now[0] = 1000.0
    assert not watchdog.stalled()


def test_a_request_waiting_for_a_replica_that_does_not_run_gets_a_503_and_no_retry(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llm_client, "FIRST_OUTPUT_CHECK_S", 0.1)

    async def scenario(running: bool) -> tuple[OpenAIError | None, int, int]:
        server, fake = await start_llm_server(app_config(model), hang_at_step=0)
        handle = Replicas([server])
        asked: list[bool] = []

        async def replicas_running() -> bool:
            asked.append(running)
            return running

        client = LLMServerClient(handle, "grpc", replicas_running=replicas_running)  # type: ignore[arg-type]
        params = completion_request()
        outputs = client.generate(params.prompt, params.params, "r")
        try:
            await asyncio.wait_for(anext(outputs), 0.5)
            error = None
        except OpenAIError as exc:
            error = exc
        except TimeoutError:
            error = None
        fake.die()  # end the hung step
        return error, handle.tried, len(asked)

    refused, tried, asked = run(scenario(running=False))
    assert refused is not None and (refused.status_code, refused.code) == (503, "no_replica")
    assert (tried, asked) == (1, 1)
    waited, tried, asked = run(scenario(running=True))
    assert waited is None and tried == 1 and asked >= 3  # kept waiting, asking every check
