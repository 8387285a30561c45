"""One API request's generation: its engine requests, sampling, timings and usage so far."""

import time
from dataclasses import dataclass, field

from serve_app.api.protocol import ChatCompletionRequest, CompletionRequest, Usage, VllmStats
from serve_app.core.payloads import ChoiceDelta, GenerateRequest, SamplingSpec, TokenLogprob


def sampling_spec(
    request: ChatCompletionRequest | CompletionRequest, max_tokens: int
) -> SamplingSpec:
    """Engine-neutral sampling settings; OpenAI's defaults where the client sent none."""
    return SamplingSpec(
        max_tokens=max_tokens,
        n=request.n,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed,
        stop=request.stop_sequences,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        logprobs=request.num_logprobs,
        top_k=request.top_k,
        min_p=request.min_p,
        repetition_penalty=request.repetition_penalty,
        min_tokens=request.min_tokens or 0,
        ignore_eos=request.ignore_eos,
    )


@dataclass
class Timer:
    """Wall-clock timings of one API request, from its arrival at the ingress."""

    start: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    last_token: float | None = None
    end: float | None = None
    token_gaps: list[tuple[float, int]] = field(default_factory=list)

    def saw_tokens(self, count: int) -> None:
        now = time.perf_counter()
        if self.last_token is None:
            self.first_token = now
        else:
            self.token_gaps.append((now - self.last_token, count))
        self.last_token = now

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    def stats(self, completion_tokens: int) -> VllmStats:
        end = self.end or time.perf_counter()
        elapsed = end - self.start
        return VllmStats(
            inference_time_seconds=round(elapsed, 6),
            tokens_per_second=round(completion_tokens / elapsed, 3) if elapsed > 0 else 0.0,
            time_to_first_token_seconds=None if self.ttft is None else round(self.ttft, 6),
        )


@dataclass
class ChoiceResult:
    """One choice's output accumulated over the stream (for non-streaming responses)."""

    text_parts: list[str] = field(default_factory=list)
    num_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        self.text_parts.append(delta.text)
        self.num_tokens += delta.num_tokens
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


@dataclass
class Generation:
    """The engine requests of one API request, and what came back of them so far."""

    request_id: str
    requests: list[GenerateRequest]
    timer: Timer
    completion_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return sum(len(r.prompt_token_ids) for r in self.requests)

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )
