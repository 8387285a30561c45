"""What one API request did, as the ingress saw it: its timings, tokens and outcome.

The route opens a `RequestRecord` (`open_record`); `LLMServerClient.generate` adds every
engine output it relays to the record of the request it serves (found through a context
variable, so vLLM's serving classes in between need not know); when the response ends, the
record goes to the metrics and the request log, and gives non-streamed responses their
`vllm_stats`.
"""

import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from serve_app.api.protocol import VllmStats
from serve_app.core.errors import OpenAIError
from serve_app.observability.metrics import IngressMetrics

# One line per generation request: id, route, status, tokens, TTFT, time, tokens/s. With
# serve_config.yaml's `logging_config: {encoding: JSON}` the fields become JSON keys.
request_log = logging.getLogger("ray.serve")

_current: contextvars.ContextVar["RequestRecord | None"] = contextvars.ContextVar(
    "request_record", default=None
)


@dataclass
class RequestRecord:
    """Timings (from the request's arrival at the ingress) and tokens of one API request."""

    route: str
    # The conversation the client named (session header or `user`), for session affinity.
    session: str | None = None
    start: float = field(default_factory=time.perf_counter)
    request_ids: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token: float | None = None
    last_token: float | None = None
    token_gaps: list[tuple[float, int]] = field(default_factory=list)
    # The last error the LLM server's client raised for this request (vLLM's serving classes
    # turn it into an error event of their own shape mid-stream; this keeps ours).
    error: OpenAIError | None = None
    end: float | None = None
    # Called once when the request ends (its rate-limit settlement).
    on_finish: Callable[["RequestRecord"], None] | None = None

    def started(self, request_id: str, prompt_tokens: int) -> None:
        """An engine request of this API request was sent."""
        self.request_ids.append(request_id)
        self.prompt_tokens += prompt_tokens

    def saw_tokens(self, count: int) -> None:
        if not count:
            return
        now = time.perf_counter()
        if self.last_token is None:
            self.first_token = now
        else:
            self.token_gaps.append((now - self.last_token, count))
        self.last_token = now
        self.completion_tokens += count

    @property
    def used_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    def stats(self) -> VllmStats:
        """The original guide's timing block of a non-streamed response."""
        elapsed = (self.end or time.perf_counter()) - self.start
        return VllmStats(
            inference_time_seconds=round(elapsed, 6),
            tokens_per_second=round(self.completion_tokens / elapsed, 3) if elapsed > 0 else 0.0,
            time_to_first_token_seconds=None if self.ttft is None else round(self.ttft, 6),
        )

    def finish(self, metrics: IngressMetrics, status: str) -> None:
        """Record the request in the metrics and the request log, once, if it reached the
        engine (a request refused before is counted as an error response only)."""
        if self.end is not None:
            return
        self.end = time.perf_counter()
        if self.on_finish is not None:
            self.on_finish(self)
        if not self.request_ids:
            return
        metrics.record_generation(
            self.route,
            self.prompt_tokens,
            self.completion_tokens,
            self.ttft,
            self.token_gaps,
            aborted=status == "aborted",
        )
        stats = self.stats()
        fields = {
            "request_id": ",".join(self.request_ids) or None,
            "route": self.route,
            "status": status,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.completion_tokens,
            "ttft_s": stats.time_to_first_token_seconds,
            "inference_time_s": stats.inference_time_seconds,
            "tokens_per_s": stats.tokens_per_second,
        }
        request_log.info(" ".join(f"{key}={value}" for key, value in fields.items()), extra=fields)


def open_record(route: str, session: str | None = None) -> RequestRecord:
    """A record for the request this task serves, found later by `current_record`."""
    record = RequestRecord(route, session)
    _current.set(record)
    return record


def current_record() -> RequestRecord | None:
    return _current.get()
