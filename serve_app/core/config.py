"""The application's configuration: serve_config.yaml `args`, then environment overrides."""

from collections.abc import Mapping
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from serve_app.core.constants import (
    DEFAULT_CPU_KVCACHE_GIB,
    DEFAULT_ENGINE_STALL_TIMEOUT_S,
    DEFAULT_ENGINE_TRANSPORT,
    DEFAULT_MAX_BLOCKS_PER_REPLICA,
    DEFAULT_MAX_CHUNKS_PER_SECOND,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_METRICS_EXPORT_PORT,
    DEFAULT_MODEL_ID,
    DEFAULT_QUEUED_REQUEST_COST_TOKENS,
    DEFAULT_SESSION_HEADER,
    E2E_BUCKETS_S,
    ENV_ACCELERATOR,
    ENV_FAIL_FAST_ON_MISSING_GPUS,
    ENV_MODEL_NAME,
    ENV_SERVED_MODEL_NAME,
    ENV_TENSOR_PARALLEL_SIZE,
    ITL_BUCKETS_S,
    QUEUE_BUCKETS_S,
    TTFT_BUCKETS_S,
)

# What an engine runs on, and what the config may ask for (auto: GPU when the cluster has one).
Accelerator = Literal["cpu", "gpu"]
AcceleratorSetting = Literal["auto", "cpu", "gpu"]
EngineTransport = Literal["grpc", "actor"]


Buckets = Annotated[list[PositiveFloat], Field(min_length=1)]
StallTimeout = Annotated[
    PositiveFloat | None,
    Field(
        description="Per LLM replica: requests in flight and no engine output for this long "
        "(seconds) means a hung engine; the replica kills it and Serve replaces the replica "
        "(null: never)."
    ),
]
ChunksPerSecond = Annotated[
    PositiveFloat | None,
    Field(
        description="Per LLM replica: above this rate of stream chunks, merge tokens into "
        "fewer chunks (null: one chunk per token always)."
    ),
]


class MetricsConfig(BaseModel):
    """What the service exports to Prometheus (docs/observability.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine_metrics: bool = Field(True, description="Export vLLM's own metrics per replica.")
    export_port: PositiveInt = Field(
        DEFAULT_METRICS_EXPORT_PORT,
        description="Ray's metrics export port, set when `python -m serve_app serve` starts Ray.",
    )
    ttft_buckets_s: Buckets = Field(default_factory=lambda: list(TTFT_BUCKETS_S))
    itl_buckets_s: Buckets = Field(default_factory=lambda: list(ITL_BUCKETS_S))
    e2e_buckets_s: Buckets = Field(default_factory=lambda: list(E2E_BUCKETS_S))
    queue_buckets_s: Buckets = Field(default_factory=lambda: list(QUEUE_BUCKETS_S))

    @field_validator("ttft_buckets_s", "itl_buckets_s", "e2e_buckets_s", "queue_buckets_s")
    @classmethod
    def _increasing(cls, buckets: list[float]) -> list[float]:
        if any(low >= high for low, high in pairwise(buckets)):
            raise ValueError("histogram buckets must be strictly increasing")
        return buckets


class LiveSettings(BaseModel):
    """LLMServer settings that change without a restart: the deployment's Serve `user_config`.

    The builder sets them from the app args; `user_config` under the LLMServer deployment in
    serve_config.yaml overrides them live (Serve calls `LLMServer.reconfigure`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_chunks_per_second: ChunksPerSecond = DEFAULT_MAX_CHUNKS_PER_SECOND
    engine_stall_timeout_s: StallTimeout = DEFAULT_ENGINE_STALL_TIMEOUT_S


class RateLimit(BaseModel):
    """One client's allowance per minute (null: no limit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: PositiveInt | None = Field(
        None, description="Generation requests per minute."
    )
    tokens_per_minute: PositiveInt | None = Field(
        None,
        description="Prompt plus completion tokens per minute (reserved on admission: the "
        "prompt's estimate plus max tokens; settled to the tokens used).",
    )

    @property
    def enabled(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


class RateLimits(RateLimit):
    """Rate limits per API key (per client address when API keys are off), held across all
    ingress replicas: the OpenAIIngress deployment's Serve `user_config`, so they change
    without a restart. The builder sets them from the app args; `user_config` under the
    OpenAIIngress deployment overrides them live."""

    per_key: dict[str, RateLimit] = Field(
        default_factory=dict,
        description="Overrides by API key name (`API_KEYS=name:key,...`); the fields an "
        "override sets replace the defaults above.",
    )

    def for_client(self, key_name: str | None) -> RateLimit:
        """The limits of the client with API key `key_name` (None: an address)."""
        override = self.per_key.get(key_name) if key_name is not None else None
        if override is None:
            return RateLimit.model_validate(self.model_dump(exclude={"per_key"}))
        base = self.model_dump(exclude={"per_key"})
        return RateLimit.model_validate(base | override.model_dump(exclude_unset=True))

    @property
    def enabled(self) -> bool:
        return super().enabled or any(limit.enabled for limit in self.per_key.values())


class RoutingConfig(BaseModel):
    """How the ingress picks the LLM-server replica of each request."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    router: Literal["cache_aware", "serve_default"] = Field(
        "cache_aware",
        description="cache_aware: the replica whose prefix cache saves the most prefill for "
        "its load, a conversation kept on one replica; serve_default: Ray Serve's "
        "power-of-two-choices router (load only).",
    )
    queued_request_cost_tokens: PositiveInt = Field(
        DEFAULT_QUEUED_REQUEST_COST_TOKENS,
        description="Prefill tokens one request running or queued on a replica is worth: a "
        "cached prefix of N tokens outweighs N / this many requests of extra load.",
    )
    block_tokens: PositiveInt | None = Field(
        None,
        description="Tokens per prefix block, as vLLM's prefix cache counts them (null: "
        "`engine_kwargs.block_size`, else vLLM's default for the accelerator).",
    )
    max_blocks_per_replica: PositiveInt = Field(
        DEFAULT_MAX_BLOCKS_PER_REPLICA,
        description="Prompt blocks remembered per replica (least recently used forgotten).",
    )
    max_sessions: PositiveInt = Field(
        DEFAULT_MAX_SESSIONS,
        description="Conversations remembered (least recently used forgotten).",
    )
    session_header: str = Field(
        DEFAULT_SESSION_HEADER,
        description="Request header naming a conversation; without it, the body's `user`.",
    )


class AppConfig(BaseModel):
    """Arguments of the application builder (`deployments.app:build_app`)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), frozen=True)

    model: str = Field(
        DEFAULT_MODEL_ID,
        description="Hugging Face id or local path (the default id: the bundled GGUF).",
    )
    served_model_name: str | None = Field(
        None, description="Name clients pass as `model`; defaults to `model`."
    )
    tokenizer: str | None = Field(
        None, description="Tokenizer id or path; defaults to the model's."
    )
    tensor_parallel_size: PositiveInt = 1
    gpu_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0,
        description="Share of one GPU per replica (tensor_parallel_size 1 only): below 1, "
        "several replicas share a GPU, each engine taking that share of its memory. A test "
        "and benchmark mode for routing and autoscaling on one GPU.",
    )
    max_model_len: PositiveInt | None = Field(
        None, description="Context length; defaults to the model's."
    )
    accelerator: AcceleratorSetting = Field(
        "auto", description="auto: GPU when the Ray cluster has GPUs, else vLLM's CPU backend."
    )
    placement_strategy: Literal["STRICT_PACK", "PACK"] = Field(
        "STRICT_PACK",
        description="Placement of a tensor-parallel replica's GPUs: one node, or across nodes.",
    )
    fail_fast_on_missing_gpus: bool = Field(
        True,
        description="Refuse to deploy when no node has tensor_parallel_size GPUs free "
        "(turn off on clusters whose autoscaler adds GPU nodes on demand).",
    )
    cpu_cores_per_replica: PositiveInt = Field(
        1,
        description="CPU backend: cores each LLM replica reserves in Ray and binds its "
        "engine's threads to; replicas on one node get cores of their own, by their rank there.",
    )
    cpu_kvcache_gib: PositiveFloat = Field(
        DEFAULT_CPU_KVCACHE_GIB,
        description="KV-cache memory per replica on the CPU backend.",
    )
    warmup: bool = Field(True, description="Run one request before a replica reports ready.")
    max_chunks_per_second: ChunksPerSecond = DEFAULT_MAX_CHUNKS_PER_SECOND
    engine_stall_timeout_s: StallTimeout = DEFAULT_ENGINE_STALL_TIMEOUT_S
    engine_transport: EngineTransport = Field(
        DEFAULT_ENGINE_TRANSPORT,
        description="How token streams travel from LLM replicas to the ingress: grpc "
        "(Serve's replica-to-replica gRPC channel) or actor (Ray actor-task streaming).",
    )
    max_request_bytes: PositiveInt = Field(
        DEFAULT_MAX_REQUEST_BYTES,
        description="Largest request body the ingress reads; larger ones get a 413 error.",
    )
    allowed_origins: tuple[str, ...] = Field(
        (),
        description="Origins whose browser pages may call the API (CORS), e.g. "
        "https://app.example.com, or * for any; none (the default): no CORS headers.",
    )
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template instead of the tokenizer's, as `vllm serve "
        "--chat-template`: a file path, the template itself, or a bundled one by name "
        "(chatml_tools: ChatML with tools, for the hermes tool parser).",
    )
    tool_call_parser: str | None = Field(
        None,
        description="vLLM's tool parser for the model's tool calls (`--tool-call-parser`), "
        "e.g. hermes; tools need it.",
    )
    enable_auto_tool_choice: bool = Field(
        False,
        description="Accept tool_choice auto (`--enable-auto-tool-choice`); with vLLM 0.32 "
        "required and named tool choice need it too.",
    )
    reasoning_parser: str | None = Field(
        None,
        description="vLLM's reasoning parser (`--reasoning-parser`): the model's reasoning in "
        "`reasoning_content` of responses and deltas.",
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    llm_server_env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables of the LLM-server replicas and the engine process "
        "each starts (their Ray runtime_env), e.g. VLLM_* settings.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra vLLM AsyncEngineArgs, applied last."
    )

    @model_validator(mode="after")
    def _gpu_share_needs_one_gpu_per_replica(self) -> "AppConfig":
        if self.gpu_fraction < 1 and self.tensor_parallel_size > 1:
            raise ValueError("gpu_fraction below 1 needs tensor_parallel_size 1")
        return self

    def resolve_accelerator(self, cluster_gpus: float) -> Accelerator:
        """What the engines run on in a cluster with `cluster_gpus` GPUs."""
        if self.accelerator != "auto":
            return self.accelerator
        return "gpu" if cluster_gpus >= 1 else "cpu"

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def live_settings(self) -> LiveSettings:
        return LiveSettings(
            max_chunks_per_second=self.max_chunks_per_second,
            engine_stall_timeout_s=self.engine_stall_timeout_s,
        )

    @classmethod
    def from_args(cls, args: Mapping[str, Any], env: Mapping[str, str]) -> "AppConfig":
        """Validate builder args, letting the guide's environment variables override them."""
        merged = dict(args)  # null keeps its meaning (e.g. max_chunks_per_second: no pacing)
        if model := env.get(ENV_MODEL_NAME):
            merged["model"] = model
            merged.pop("served_model_name", None)
            merged.pop("tokenizer", None)
        if served := env.get(ENV_SERVED_MODEL_NAME):
            merged["served_model_name"] = served
        if tp := env.get(ENV_TENSOR_PARALLEL_SIZE):
            merged["tensor_parallel_size"] = tp
        # On an autoscaling cluster, GPUs may join after the deploy: name the accelerator.
        if accelerator := env.get(ENV_ACCELERATOR):
            merged["accelerator"] = accelerator
        if fail_fast := env.get(ENV_FAIL_FAST_ON_MISSING_GPUS):
            merged["fail_fast_on_missing_gpus"] = fail_fast
        return cls.model_validate(merged)
