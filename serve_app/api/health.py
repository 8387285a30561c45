"""Whether the service can answer: at least one LLM-server replica is RUNNING, as Serve's
controller sees it (its health checks call the engine's). Answers GET /health, and lets the
ingress refuse generation at once with a 503 while no replica runs, instead of letting Serve
queue the request until a new replica has loaded its model.

Asking the controller (`serve.status()`) costs the ingress's process milliseconds of CPU (it
rebuilds every deployment's config): twice a second it took 13-18% of an ingress replica's
samples at concurrency 128 on an H200. So it is asked only when someone needs the answer:
`/health` (at most every `HEALTH_POLL_SECONDS`); after a replica failed, every
`HEALTH_POLL_SECONDS` until one runs again, and afresh for each generation request meanwhile
(callers at the same moment share one question).
"""

import asyncio
import time

from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.schema import ReplicaState

from serve_app.api.protocol import Health
from serve_app.core.config import AppConfig
from serve_app.core.constants import (
    HEALTH_POLL_SECONDS,
    LLM_SERVER_DEPLOYMENT,
    REPLICA_FAILURE_WATCH_SECONDS,
)
from serve_app.core.errors import no_replica, shutting_down


class ServiceHealth:
    """The count of RUNNING LLM-server replicas, as last asked of the controller."""

    def __init__(self, app_name: str, config: AppConfig) -> None:
        self._app_name = app_name
        self._config = config
        self._running: int | None = None  # None until asked
        self._asked_at = float("-inf")
        self._lock = asyncio.Lock()
        self._failed_at = float("-inf")
        self._draining = False
        self._watch: asyncio.Task[None] | None = None

    async def running_replicas(self, max_age_s: float = HEALTH_POLL_SECONDS) -> int:
        """The count, asked again when the last question started more than `max_age_s`
        before this call (0: a question that started after this call; callers waiting on one
        share its answer)."""
        called = time.monotonic()
        async with self._lock:
            if self._asked_at < called - max_age_s:
                self._asked_at = time.monotonic()
                self._running = await asyncio.to_thread(self._ask_controller)
        return self._running or 0

    def replica_failed(self) -> None:
        """A request's replica failed: follow the controller until a replica runs again (the
        controller may still count the failed one for a moment)."""
        self._failed_at = time.monotonic()
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._follow_recovery())

    async def _follow_recovery(self) -> None:
        while True:
            running = await self.running_replicas()
            if running and time.monotonic() - self._failed_at > REPLICA_FAILURE_WATCH_SECONDS:
                return
            await asyncio.sleep(HEALTH_POLL_SECONDS)

    async def any_running(self) -> bool:
        """Whether a replica runs, asked afresh unless asked in the last `HEALTH_POLL_SECONDS`."""
        return await self.running_replicas() > 0

    def drain(self, draining: bool) -> None:
        """While draining, generation requests and /health get a 503 (the service is about to
        stop: load balancers and clients go elsewhere while requests in flight finish)."""
        self._draining = draining

    async def require_replica(self) -> None:
        """Raise a 503 while draining, or when no replica runs. Free while replicas run and
        none failed lately; after a failure (until the watch ends), and whenever the last
        count was 0, the controller is asked afresh, so a request is never queued on an old
        count."""
        if self._draining:
            raise shutting_down()
        watching = self._watch is not None and not self._watch.done()
        if (watching or self._running == 0) and not await self.running_replicas(max_age_s=0):
            raise no_replica()

    async def response(self) -> JSONResponse:
        """200 with the body while a replica runs, else 503 with the same body (and
        `Retry-After`, as every 503)."""
        running = await self.running_replicas()
        status = "draining" if self._draining else "healthy" if running else "unhealthy"
        body = Health(
            status=status,
            model=self._config.served_name,
            tensor_parallel_size=self._config.tensor_parallel_size,
            healthy_replicas=running,
        )
        if status == "healthy":
            return JSONResponse(body.model_dump())
        return JSONResponse(body.model_dump(), status_code=503, headers=no_replica().headers())

    def _ask_controller(self) -> int:
        app = serve.status().applications.get(self._app_name)
        deployment = app.deployments.get(LLM_SERVER_DEPLOYMENT) if app else None
        return deployment.replica_states.get(ReplicaState.RUNNING, 0) if deployment else 0
