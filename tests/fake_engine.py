"""A fake vLLM engine for unit tests of the serving layer: real `RequestOutput`s, no model.

`FakeEngine` is what `LLMServer`'s `engine_factory` seam accepts in place of vLLM's
`AsyncLLM`: `generate` yields DELTA `RequestOutput`s of a made-up text, one token per step for
each of the request's `n` choices, honouring `max_tokens` and `logprobs`; a consumer that
leaves early aborts the request, as vLLM's does. `InProcessLLMServer` is the ingress's view of
an `LLMServer` built on it, without Ray: the serving classes take it in place of
`LLMServerClient`.
"""

import asyncio
import functools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from vllm import SamplingParams
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput

from deployments.llm_server import LLMServer
from serve_app.core.config import AppConfig
from serve_app.core.payloads import EngineStats, GenerateRequest, GenerationChunk, ModelInfo

VOCABULARY = 50
MAX_MODEL_LEN = 256


def token_id(prompt: list[int], choice: int, step: int) -> int:
    """The made-up token a choice generates at a step: different per prompt and per choice."""
    return 10 + (sum(prompt) + 7 * choice + step) % VOCABULARY


def token_text(token: int) -> str:
    return f" w{token}"


@dataclass
class FakeEngine:
    """Stands in for `AsyncLLM`: `step_s` between steps; with `fail_at_step`, the request is
    refused (a ValueError, as vLLM raises) when it reaches that step."""

    engine_kwargs: Mapping[str, Any]
    placement_group: Any = None
    metrics: str = "off"
    step_s: float = 0.0
    fail_at_step: int | None = None
    requests: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    model_config: Any = field(
        default_factory=lambda: SimpleNamespace(max_model_len=MAX_MODEL_LEN, max_logprobs=20)
    )
    vllm_config: Any = field(
        default_factory=lambda: SimpleNamespace(
            cache_config=SimpleNamespace(
                num_gpu_blocks=64, block_size=16, gpu_memory_utilization=0.9
            )
        )
    )

    @classmethod
    def factory(cls, **options: Any) -> Any:
        """An `engine_factory` that makes a FakeEngine with these options (the test reads it
        back from `LLMServer._engine`)."""
        return functools.partial(cls, **options)

    async def generate(
        self, prompt: Mapping[str, list[int]], params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        self.requests.append(request_id)
        prompt_ids = list(prompt["prompt_token_ids"])
        finished = False
        try:
            for step in range(params.max_tokens):
                if self.step_s:
                    await asyncio.sleep(self.step_s)
                if step == self.fail_at_step:
                    raise ValueError(f"fake refusal at step {step}")
                last = step == params.max_tokens - 1
                outputs = [
                    self._output(prompt_ids, choice, step, last, params.logprobs)
                    for choice in range(params.n)
                ]
                finished = last
                yield RequestOutput(
                    request_id=request_id,
                    prompt=None,
                    prompt_token_ids=prompt_ids,
                    prompt_logprobs=None,
                    outputs=outputs,
                    finished=last,
                )
        finally:
            if not finished:
                self.aborted.append(request_id)

    @staticmethod
    def _output(
        prompt: list[int], choice: int, step: int, last: bool, logprobs: int | None
    ) -> CompletionOutput:
        token = token_id(prompt, choice, step)
        top = None
        if logprobs is not None:
            top = [{token: Logprob(logprob=-0.25, rank=1, decoded_token=token_text(token))}]
        return CompletionOutput(
            index=choice,
            text=token_text(token),
            token_ids=[token],
            cumulative_logprob=None,
            logprobs=top,
            finish_reason="length" if last else None,
        )

    async def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


async def start_llm_server(config: AppConfig, **engine_options: Any) -> tuple[Any, FakeEngine]:
    """An `LLMServer` (the class behind the Serve deployment) on a FakeEngine, and the engine."""
    cls = LLMServer.func_or_class
    server = cls.__new__(cls)
    await server.__init__(config, "cpu", FakeEngine.factory(**engine_options))
    return server, server._engine


class InProcessLLMServer:
    """`LLMServerAPI` over an LLMServer in this process: what `LLMServerClient` does over Serve,
    minus the transport."""

    def __init__(self, server: Any) -> None:
        self._server = server

    async def model_info(self) -> ModelInfo:
        return await self._server.model_info()

    async def engine_stats(self) -> EngineStats:
        return await self._server.engine_stats()

    async def stream(self, request: GenerateRequest) -> AsyncIterator[GenerationChunk]:
        async for chunk in self._server.generate(request):
            yield chunk
