"""Chunk pacing in the LLM server: one chunk per token while the replica's chunk rate fits
its budget; beyond it, each stream merges its tokens into fewer, larger chunks.

Every chunk costs the same hop to the ingress, SSE event and proxy write whatever it
carries. A replica streaming to S clients at T engine steps a second emits S x T chunks a
second (8 000/s at concurrency 128 on an H200), more than one ingress replica relays at
full speed (benchmarks/results/NOTES.md, 5: 4 561 tok/s unpaced, 6 029 paced). Over
budget, a stream's tokens wait for its next engine output instead of leaving one by one:
no timer holds anything, the first token and the last always leave at once, and the merge
factor follows the measured rate.
"""

import math
import time
from collections.abc import Callable

from serve_app.core.payloads import ChoiceDelta, GenerationChunk


class ChunkPacer:
    """Tokens per chunk for the replica's streams, from the rate of engine outputs."""

    def __init__(
        self,
        max_chunks_per_s: float | None,
        window_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._budget = max_chunks_per_s
        self._window_s = window_s
        self._clock = clock
        self._window_start = clock()
        self._outputs = 0
        self.tokens_per_chunk = 1

    def saw_output(self) -> None:
        """One engine output for one stream: what would be one chunk without pacing."""
        if self._budget is None:
            return
        self._outputs += 1
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed >= self._window_s:
            rate = self._outputs / elapsed
            self.tokens_per_chunk = max(1, math.ceil(rate / self._budget))
            self._window_start, self._outputs = now, 0


class MergeFactors:
    """A stream's tokens per choice delta, as vLLM delivered them and as sent.

    More than one token per delta from vLLM means its per-request output collector merged
    engine steps that this replica read late; more as sent than from vLLM is pacing's.
    """

    def __init__(self) -> None:
        self._tokens = 0
        self._from_engine = 0
        self._sent = 0

    def from_engine(self, chunk: GenerationChunk) -> None:
        self._tokens += sum(d.num_tokens for d in chunk.choices)
        self._from_engine += _deltas_with_tokens(chunk)

    def sent(self, chunk: GenerationChunk) -> GenerationChunk:
        """Count the chunk as sent, and return it."""
        self._sent += _deltas_with_tokens(chunk)
        return chunk

    def ratios(self) -> dict[str, float]:
        """Tokens per delta by stage, `engine` and `sent`; none for a stream without tokens."""
        if not self._tokens:
            return {}
        return {"engine": self._tokens / self._from_engine, "sent": self._tokens / self._sent}


def _deltas_with_tokens(chunk: GenerationChunk) -> int:
    return sum(1 for d in chunk.choices if d.num_tokens)


class PendingChunk:
    """A stream's output not yet sent, merged choice by choice."""

    def __init__(self) -> None:
        self._choices: dict[int, ChoiceDelta] = {}
        self._tokens = 0
        self._sent_any = False

    def add(self, chunk: GenerationChunk) -> None:
        for delta in chunk.choices:
            self._tokens += delta.num_tokens
            held = self._choices.get(delta.index)
            self._choices[delta.index] = delta if held is None else _merge(held, delta)

    def ready(self, tokens_per_chunk: int) -> bool:
        """Send now: the first output, a finished choice, or enough tokens gathered."""
        if not self._choices:
            return False
        finished = any(d.finish_reason for d in self._choices.values())
        return not self._sent_any or finished or self._tokens >= tokens_per_chunk

    def take(self) -> GenerationChunk:
        chunk = GenerationChunk(choices=list(self._choices.values()))
        self._choices, self._tokens, self._sent_any = {}, 0, True
        return chunk


def _merge(first: ChoiceDelta, then: ChoiceDelta) -> ChoiceDelta:
    logprobs = None
    if first.logprobs is not None or then.logprobs is not None:
        logprobs = (first.logprobs or []) + (then.logprobs or [])
    return ChoiceDelta(
        index=first.index,
        text=first.text + then.text,
        num_tokens=first.num_tokens + then.num_tokens,
        logprobs=logprobs,
        finish_reason=then.finish_reason or first.finish_reason,
    )
