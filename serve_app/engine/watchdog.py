"""Whether an LLM-server replica's engine still makes progress: stalled when requests are in
flight and no output of any of them came for longer than the stall timeout (a step that
never returns: a hung GPU kernel, a deadlocked or stopped engine process)."""

import time
from collections.abc import Callable


class EngineWatchdog:
    """Counts the requests in flight and the time of the engine's last output.

    The clock starts when a request arrives at an idle engine, so an idle engine never stalls.
    """

    def __init__(
        self, stall_timeout_s: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stall_timeout_s = stall_timeout_s  # None: never stalled (live setting)
        self._clock = clock
        self._in_flight = 0
        self._last_progress = clock()

    def started(self) -> None:
        if self._in_flight == 0:
            self._last_progress = self._clock()
        self._in_flight += 1

    def progressed(self) -> None:
        self._last_progress = self._clock()

    def finished(self) -> None:
        self._in_flight -= 1

    def stalled(self) -> bool:
        if self.stall_timeout_s is None or self._in_flight == 0:
            return False
        return self._clock() - self._last_progress > self.stall_timeout_s
