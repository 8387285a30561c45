"""The LLM-server deployment: one vLLM engine per replica, streaming its outputs.

Nothing HTTP-shaped enters here: the ingress's vLLM serving classes render and tokenize the
request and send an `EngineRequest` (`AsyncLLM.generate`'s arguments); the replica streams
back vLLM's DELTA `RequestOutput`s, merged into fewer when paced. A consumer that goes away
cancels the generator, which aborts the request in the engine (counted in
`llm_engine_cancellations`).

An engine that fails is a first-class event (`_fail`): dead (its process exited: OOM kill,
CUDA fault) or stalled (requests in flight and no output for `engine_stall_timeout_s`, after
which the replica kills it). Every request in flight and every later one gets a 503
`engine_failed` error, the health check fails, and the replica's process exits at once so that
Serve replaces it at its next health check (`health_check_period_s`) instead of after three
failed ones.

The engine comes from `engine_factory` (vLLM's `AsyncLLM` by default), the seam where unit
tests plug in a fake engine that yields real `RequestOutput`s.
"""

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import ray
from ray import serve
from ray.serve.exceptions import RayServeException

from serve_app import vllm_compat
from serve_app.core.config import Accelerator, AppConfig, LiveSettings
from serve_app.core.constants import (
    ENGINE_CHECK_INTERVAL_S,
    FAILED_REPLICA_EXIT_DELAY_S,
    LLM_SERVER_DEPLOYMENT,
)
from serve_app.core.errors import engine_failed, invalid_request
from serve_app.core.payloads import EngineStats, ModelInfo
from serve_app.engine.engine_args import (
    bind_cpu_cores,
    build_engine_kwargs,
)
from serve_app.engine.pacing import ChunkPacer, MergeFactors, PendingOutput
from serve_app.engine.watchdog import EngineWatchdog
from serve_app.observability.gpu_stats import read_gpu_memory
from serve_app.observability.metrics import LLMServerMetrics
from serve_app.vllm_compat import EngineRequest, RequestOutput, SamplingParams

_WARMUP_PROMPT = [1, 2, 3, 4]

EngineFailure = Literal["died", "stalled"]
logger = logging.getLogger("ray.serve")


def _exit_replica() -> None:
    """End this replica's process; Serve sees the actor gone and starts a new replica."""
    os._exit(1)


def _local_rank() -> int | None:
    """This replica's rank among the deployment's replicas on its node (None outside Serve)."""
    try:
        return serve.get_replica_context().rank.local_rank
    except RayServeException:
        return None


@serve.deployment(name=LLM_SERVER_DEPLOYMENT)
class LLMServer:
    """Wraps one vLLM AsyncLLM (on a GPU, a tensor-parallel placement group, or the CPU)."""

    async def __init__(
        self,
        config: AppConfig,
        accelerator: Accelerator,
        engine_factory: vllm_compat.EngineFactory = vllm_compat.create_engine,
        exit_replica: Callable[[], None] = _exit_replica,
    ) -> None:
        self._config = config
        self._exit_replica = exit_replica
        self._failure: EngineFailure | None = None
        self._stopping = False
        self._watchdog = EngineWatchdog(config.engine_stall_timeout_s)
        self._accelerator = accelerator
        if accelerator == "cpu" and (rank := _local_rank()) is not None:
            bind_cpu_cores(config, rank, sorted(os.sched_getaffinity(0)))
        placement_group = (
            ray.util.get_current_placement_group() if config.tensor_parallel_size > 1 else None
        )
        self._engine = engine_factory(
            build_engine_kwargs(config, accelerator),
            placement_group=placement_group,
            metrics="ray" if config.metrics.engine_metrics else "off",
        )
        self._info = ModelInfo(
            max_model_len=vllm_compat.max_model_len(self._engine),
            tensor_parallel_size=config.tensor_parallel_size,
            accelerator=accelerator,
            max_logprobs=vllm_compat.max_logprobs(self._engine),
        )
        self._metrics = LLMServerMetrics(config.served_name, config.metrics)
        # Pacing from the start (the warm-up streams too); Serve calls reconfigure again after.
        self.reconfigure(config.live_settings.model_dump())
        if config.warmup:
            await self._warm_up()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        """Notice a dead or stalled engine even when no request is reading from it."""
        while self._failure is None:
            await asyncio.sleep(ENGINE_CHECK_INTERVAL_S)
            if vllm_compat.engine_dead(self._engine):
                self._fail("died")
            elif self._watchdog.stalled():
                self._fail("stalled")

    def _fail(self, failure: EngineFailure) -> None:
        """Fail this replica once: a stalled engine is killed, so its requests end with
        `EngineDeadError` like a dead one's; then the process exits. Not while Serve stops the
        replica: its engine is then shut down on purpose."""
        if self._failure is not None or self._stopping:
            return
        self._failure = failure
        self._metrics.engine_failures.inc(tags={"failure": failure})
        logger.error("The engine %s; failing its requests and exiting for a new replica.", failure)
        if failure == "stalled":
            vllm_compat.kill_engine_processes(self._engine)
        asyncio.get_running_loop().call_later(FAILED_REPLICA_EXIT_DELAY_S, self._exit_replica)

    async def _warm_up(self) -> None:
        """Run one short request so the first client does not pay for lazy kernel setup."""
        request = EngineRequest(
            prompt={"prompt_token_ids": _WARMUP_PROMPT},
            params=SamplingParams(max_tokens=2, temperature=0.0),
            request_id="warmup",
        )
        async for _ in self.generate(request):
            pass

    async def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        """Stream the request's outputs: one per engine step, fewer when paced or collected."""
        self._metrics.queue_wait.observe(max(0.0, time.time() - request.dispatched_at))
        if self._failure is not None:
            raise engine_failed(self._failure)
        pending = PendingOutput(request.collect)
        factors = MergeFactors()
        first = True
        self._watchdog.started()
        try:
            stream = self._engine.generate(
                request.prompt, request.params, request.request_id, **request.options
            )
            async for output in stream:
                self._watchdog.progressed()
                self._pacer.saw_output()
                factors.from_engine(output)
                pending.add(output)
                if pending.ready(self._pacer.tokens_per_chunk):
                    chunk = pending.take()
                    yield factors.sent(chunk if first else vllm_compat.without_prompt(chunk))
                    first = False
        except vllm_compat.ENGINE_DEAD_ERRORS:
            self._fail("died")  # a killed stalled engine stays "stalled"
            raise engine_failed(self._failure or "died") from None
        except vllm_compat.REQUEST_ERRORS as exc:  # vLLM refused this request only.
            raise invalid_request(str(exc)) from None
        except (asyncio.CancelledError, GeneratorExit):  # vLLM's generate aborts it on the way
            self._metrics.cancellations.inc()
            raise
        finally:
            self._watchdog.finished()
        if (rest := pending.take()) is not None:
            yield factors.sent(rest if first else vllm_compat.without_prompt(rest))
        self._metrics.stream_finished(factors.ratios())

    async def engine_config(self) -> Any:
        """The engine's whole vLLM config, from which the ingress builds vLLM's serving layer."""
        return self._engine.vllm_config

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply live settings (Serve's `user_config`: the keys it names override the app's);
        streams in flight follow at once."""
        named = self._config.live_settings.model_dump() | user_config
        settings = LiveSettings.model_validate(named)
        self._pacer = ChunkPacer(settings.max_chunks_per_second)
        self._watchdog.stall_timeout_s = settings.engine_stall_timeout_s

    async def model_info(self) -> ModelInfo:
        return self._info

    async def engine_stats(self) -> EngineStats:
        stats = EngineStats(
            accelerator=self._accelerator,
            tensor_parallel_size=self._config.tensor_parallel_size,
            max_model_len=self._info.max_model_len,
            kv_cache_tokens=vllm_compat.kv_cache_tokens(self._engine),
            cpu_kvcache_gib=self._config.cpu_kvcache_gib if self._accelerator == "cpu" else None,
        )
        if self._accelerator == "cpu":
            return stats
        gpu_ids = [int(i) for i in ray.get_runtime_context().get_accelerator_ids()["GPU"]]
        memory = read_gpu_memory(gpu_ids)
        if memory is None:
            return stats
        return stats.model_copy(
            update={
                "gpu_name": memory.name,
                "gpu_count": memory.count,
                "gpu_memory_allocated_gb": memory.used_gb,
                "gpu_memory_reserved_gb": round(
                    memory.total_gb * vllm_compat.gpu_memory_utilization(self._engine), 3
                ),
                "gpu_memory_total_gb": memory.total_gb,
                "gpu_memory_scope": memory.scope,
            }
        )

    async def check_health(self) -> None:
        if self._failure is not None:
            raise RuntimeError(f"The engine {self._failure}.")
        await self._engine.check_health()

    def __del__(self) -> None:
        """Serve stops the replica: the engine is shut down on purpose, not failed."""
        self._stopping = True
        if supervisor := getattr(self, "_supervisor", None):
            supervisor.cancel()
        if engine := getattr(self, "_engine", None):
            engine.shutdown()
