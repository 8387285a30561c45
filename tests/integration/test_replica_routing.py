"""Requests reach an LLM replica through real Serve and the app's request router, whatever
the calls of one HTTP request have in common.

Beside the session's app, on its Ray cluster: a second app whose LLMServer (the real class,
with the app's cache-aware router) runs a fake engine, called from here through the
ingress's real `LLMServerClient`, inside one Serve request context as in the ingress.
"""

import asyncio
from collections.abc import Iterator

import pytest
from ray import serve
from ray.serve import context as serve_context

from deployments.llm_server import LLMServer
from deployments.request_router import request_router_config
from serve_app.api.llm_client import LLMServerClient
from serve_app.core.config import AppConfig
from serve_app.vllm_compat import SamplingParams
from tests.fake_engine import FakeEngine, tiny_model

APP = "routing-check"
ANSWER_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def llm_client(
    base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LLMServerClient]:
    """An LLMServer on a fake engine (steps of 50 ms) behind the cache-aware router."""
    config = AppConfig(model=str(tiny_model(tmp_path_factory.mktemp("tiny-model"))), warmup=False)
    server = LLMServer.options(
        name="FakeLLMServer",
        ray_actor_options={"num_cpus": 0},
        request_router_config=request_router_config(config, "cpu"),
    ).bind(config, "cpu", FakeEngine.factory(step_s=0.05))
    handle = serve.run(server, name=APP, route_prefix=None)
    try:
        yield LLMServerClient(handle, config.engine_transport)
    finally:
        serve.delete(APP)


async def generate_all(client: LLMServerClient, prompts: list[list[int]]) -> list[int]:
    """Generate every prompt at once, as the calls of one HTTP request (a batch of prompts);
    the number of outputs of each."""
    serve_context._set_request_context(request_id="one-request", _internal_request_id="one-request")

    async def generate(index: int, prompt: list[int]) -> int:
        outputs = client.generate(
            {"prompt_token_ids": prompt}, SamplingParams(max_tokens=4), f"cmpl-{index}"
        )
        return len([output async for output in outputs])

    calls = asyncio.gather(*(generate(i, prompt) for i, prompt in enumerate(prompts)))
    return await asyncio.wait_for(calls, ANSWER_TIMEOUT_S)


def test_the_prompts_of_one_request_are_all_routed(llm_client: LLMServerClient) -> None:
    """Serve's router files a waiting call under its request's internal id: calls of one
    request must not share it, or all but one wait forever (CI hung on a batch of prompts)."""
    prompts = [[5 + i, 6, 7, 8] for i in range(4)]
    assert asyncio.run(generate_all(llm_client, prompts)) == [4, 4, 4, 4]
    # Then the router still routes (none of its routing tasks is left retrying).
    assert asyncio.run(generate_all(llm_client, prompts[:1])) == [4]
