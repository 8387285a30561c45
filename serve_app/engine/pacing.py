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

from serve_app.vllm_compat import (
    RequestOutput,
    choices_with_tokens,
    finished_choice,
    merge_outputs,
    new_tokens,
)


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

    def from_engine(self, output: RequestOutput) -> None:
        self._tokens += new_tokens(output)
        self._from_engine += choices_with_tokens(output)

    def sent(self, output: RequestOutput) -> RequestOutput:
        """Count the output as sent, and return it."""
        self._sent += choices_with_tokens(output)
        return output

    def ratios(self) -> dict[str, float]:
        """Tokens per delta by stage, `engine` and `sent`; none for a stream without tokens."""
        if not self._tokens:
            return {}
        return {"engine": self._tokens / self._from_engine, "sent": self._tokens / self._sent}


class PendingOutput:
    """A stream's engine outputs not yet sent, merged into one (`vllm_compat.merge_outputs`).

    With `collect` (the client reads only the final output) everything after the first
    output waits for the end: one message instead of one per chunk.
    """

    def __init__(self, collect: bool = False) -> None:
        self._collect = collect
        self._held: RequestOutput | None = None
        self._tokens = 0
        self._sent_any = False

    def add(self, output: RequestOutput) -> None:
        self._tokens += new_tokens(output)
        self._held = output if self._held is None else merge_outputs(self._held, output)

    def ready(self, tokens_per_chunk: int) -> bool:
        """Send now: the first output, the last, else (unless collecting) a finished choice
        or enough tokens gathered."""
        if self._held is None:
            return False
        if not self._sent_any or self._held.finished:
            return True
        if self._collect:
            return False
        return finished_choice(self._held) or self._tokens >= tokens_per_chunk

    def take(self) -> RequestOutput | None:
        """What is held (None: nothing), to send now."""
        output, self._held = self._held, None
        self._tokens, self._sent_any = 0, True
        return output
