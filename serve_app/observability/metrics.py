"""Every serve-layer Prometheus metric, ingress and LLM server, with its buckets.

They are exported through `ray.serve.metrics` from every replica: Ray prefixes each name with
`ray_` (counters also get `_total`) and adds the tags `application`, `deployment` and
`replica`. docs/observability.md lists them all.
"""

import asyncio
from collections.abc import Sequence

from ray.serve.metrics import Counter, Gauge, Histogram

from serve_app.core.config import MetricsConfig
from serve_app.core.constants import TOKENS_PER_CHUNK_BUCKETS

MODEL_ROUTE = ("model", "route")
GAUGE_REFRESH_S = 5.0
UNMATCHED_ROUTE = "unmatched"


class IngressMetrics:
    """What the ingress measures: requests, latencies as clients see them, tokens, errors."""

    def __init__(self, model: str, config: MetricsConfig) -> None:
        self.requests = Counter(
            "llm_requests", "HTTP requests by route and status code.", (*MODEL_ROUTE, "status")
        )
        self.in_flight = Gauge("llm_requests_in_flight", "Requests being served now.", MODEL_ROUTE)
        self.e2e_latency = Histogram(
            "llm_e2e_request_latency_seconds",
            "From request arrival to the last byte of the response.",
            config.e2e_buckets_s,
            MODEL_ROUTE,
        )
        self.ttft = Histogram(
            "llm_time_to_first_token_seconds",
            "From request arrival to the first generated token.",
            config.ttft_buckets_s,
            MODEL_ROUTE,
        )
        self.itl = Histogram(
            "llm_inter_token_latency_seconds",
            "Gap between consecutive token deltas of a request (per token).",
            config.itl_buckets_s,
            MODEL_ROUTE,
        )
        self.prompt_tokens = Counter("llm_prompt_tokens", "Prompt tokens processed.", MODEL_ROUTE)
        self.generation_tokens = Counter("llm_generation_tokens", "Tokens generated.", MODEL_ROUTE)
        self.aborted = Counter(
            "llm_requests_aborted",
            "Generations cancelled before the end (client disconnected).",
            MODEL_ROUTE,
        )
        self.errors = Counter(
            "llm_request_errors",
            "Error responses by OpenAI error type.",
            (*MODEL_ROUTE, "error_type"),
        )
        for metric in (
            self.requests, self.in_flight, self.e2e_latency, self.ttft, self.itl,
            self.prompt_tokens, self.generation_tokens, self.aborted, self.errors,
        ):  # fmt: skip
            metric.set_default_tags({"model": model})
        # This replica's own running figures, for GET /metrics in JSON.
        self.in_flight_by_route: dict[str, int] = {}
        self.totals = {"requests": 0, "errors": 0, "prompt_tokens": 0, "generated_tokens": 0}

    async def keep_gauges_alive(self) -> None:
        """Re-set the in-flight gauge periodically: Ray drops a gauge's series from the
        export once it goes one interval without a new value, which would blank an idle
        dashboard panel."""
        while True:
            for route, count in self.in_flight_by_route.items():
                self.in_flight.set(count, {"route": route})
            await asyncio.sleep(GAUGE_REFRESH_S)

    def request_started(self, route: str) -> None:
        self._move_in_flight(route, +1)

    def request_finished(
        self, path: str, route: str | None, status: int, seconds: float, tracked: bool
    ) -> None:
        if tracked:
            self._move_in_flight(path, -1)
        tags = {"route": route or UNMATCHED_ROUTE}
        self.requests.inc(1, {**tags, "status": str(status)})
        self.e2e_latency.observe(seconds, tags)
        self.totals["requests"] += 1

    def _move_in_flight(self, route: str, delta: int) -> None:
        count = self.in_flight_by_route.get(route, 0) + delta
        self.in_flight_by_route[route] = count
        self.in_flight.set(count, {"route": route})

    def record_generation(
        self,
        route: str,
        prompt_tokens: int,
        generated_tokens: int,
        ttft_s: float | None,
        token_gaps_s: Sequence[tuple[float, int]],
        aborted: bool,
    ) -> None:
        """Token counts and latencies of one finished (or abandoned) generation."""
        tags = {"route": route}
        self.totals["prompt_tokens"] += prompt_tokens
        self.totals["generated_tokens"] += generated_tokens
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens, tags)
        if generated_tokens:
            self.generation_tokens.inc(generated_tokens, tags)
        if ttft_s is not None:
            self.ttft.observe(ttft_s, tags)
        for gap, tokens in token_gaps_s:
            per_token = gap / tokens
            for _ in range(tokens):
                self.itl.observe(per_token, tags)
        if aborted:
            self.aborted.inc(1, tags)

    def record_error(self, route: str, error_type: str) -> None:
        self.totals["errors"] += 1
        self.errors.inc(1, {"route": route, "error_type": error_type})


class LLMServerMetrics:
    """What an LLM-server replica measures: queue wait, engine cancellations, tokens per chunk,
    engine failures."""

    def __init__(self, model: str, config: MetricsConfig) -> None:
        self.queue_wait = Histogram(
            "llm_queue_wait_seconds",
            "From the ingress dispatching a request to its engine replica starting it.",
            config.queue_buckets_s,
            ("model",),
        )
        self.cancellations = Counter(
            "llm_engine_cancellations",
            "Requests cancelled in the engine because their consumer left before the end.",
            ("model",),
        )
        self.tokens_per_chunk = Histogram(
            "llm_stream_tokens_per_chunk",
            "A finished stream's tokens per chunk per choice: from vLLM (stage=engine; over 1 "
            "when vLLM merged engine steps the replica read late) and as sent (stage=sent).",
            list(TOKENS_PER_CHUNK_BUCKETS),
            ("model", "stage"),
        )
        self.engine_failures = Counter(
            "llm_engine_failures",
            "Engines that died (their process exited) or stalled (requests in flight, no "
            "output for engine_stall_timeout_s); each one's replica is replaced.",
            ("model", "failure"),
        )
        metrics = (self.queue_wait, self.cancellations, self.tokens_per_chunk, self.engine_failures)
        for metric in metrics:
            metric.set_default_tags({"model": model})

    def stream_finished(self, ratios: dict[str, float]) -> None:
        """A finished stream's tokens per chunk, by stage (see `pacing.MergeFactors`)."""
        for stage, ratio in ratios.items():
            self.tokens_per_chunk.observe(ratio, tags={"stage": stage})
