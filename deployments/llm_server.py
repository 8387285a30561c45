"""The LLM-server deployment: one vLLM engine per replica, streaming engine-neutral chunks.

Nothing HTTP-shaped enters here: the ingress sends a tokenized `GenerateRequest` and reads
`GenerationChunk`s. A consumer that goes away cancels the generator, which aborts the
request in the engine; Serve's health check calls the engine's, so a dead engine gets its
replica replaced.
"""

import logging
import os
from collections.abc import AsyncIterator
from typing import Literal

import ray
from ray import serve

from deployments import vllm_compat
from deployments.engine_args import build_engine_kwargs
from deployments.errors import invalid_request
from deployments.generation import GenerateRequest, GenerationChunk, ModelInfo, SamplingSpec
from serve_app.config import AppConfig
from serve_app.constants import LLM_SERVER_DEPLOYMENT

logger = logging.getLogger("ray.serve")

_WARMUP_PROMPT = [1, 2, 3, 4]


@serve.deployment(name=LLM_SERVER_DEPLOYMENT)
class LLMServer:
    """Wraps one vLLM AsyncLLM (on a GPU, a tensor-parallel placement group, or the CPU)."""

    async def __init__(self, config: AppConfig, accelerator: Literal["cpu", "gpu"]) -> None:
        if accelerator == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{config.cpu_kvcache_gib:g}")
        placement_group = (
            ray.util.get_current_placement_group() if config.tensor_parallel_size > 1 else None
        )
        self._engine = vllm_compat.create_engine(
            build_engine_kwargs(config, accelerator), placement_group=placement_group
        )
        self._info = ModelInfo(
            max_model_len=vllm_compat.max_model_len(self._engine),
            tensor_parallel_size=config.tensor_parallel_size,
            accelerator=accelerator,
            max_logprobs=vllm_compat.max_logprobs(self._engine),
        )
        if config.warmup:
            await self._warm_up()

    async def _warm_up(self) -> None:
        """Run one short request so the first client does not pay for lazy kernel setup."""
        request = GenerateRequest(
            request_id="warmup",
            prompt_token_ids=_WARMUP_PROMPT,
            sampling=SamplingSpec(max_tokens=2, temperature=0.0),
        )
        async for _ in self.generate(request):
            pass

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the request's output, one chunk per engine step that advanced it."""
        try:
            params = vllm_compat.sampling_params(request.sampling)
            stream = self._engine.generate(
                {"prompt_token_ids": request.prompt_token_ids}, params, request.request_id
            )
            async for output in stream:
                yield vllm_compat.to_chunk(output, request.sampling.logprobs)
        except vllm_compat.REQUEST_ERRORS as exc:  # vLLM refused this request only.
            raise invalid_request(str(exc)) from None

    async def model_info(self) -> ModelInfo:
        return self._info

    async def check_health(self) -> None:
        await self._engine.check_health()

    def __del__(self) -> None:
        if engine := getattr(self, "_engine", None):
            engine.shutdown()
