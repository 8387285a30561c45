"""Whether the service can answer: at least one LLM-server replica is RUNNING, as Serve's
controller sees it (its health checks call the engine's). Answers GET /health, and lets the
ingress refuse generation at once with a 503 while no replica runs, instead of letting Serve
queue the request until a new replica has loaded its model."""

import asyncio
import contextlib

from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.schema import ReplicaState

from serve_app.api.protocol import Health
from serve_app.core.config import AppConfig
from serve_app.core.constants import HEALTH_POLL_SECONDS, LLM_SERVER_DEPLOYMENT
from serve_app.core.errors import RETRY_AFTER_S, no_replica


class ServiceHealth:
    """Asks the controller for the app's RUNNING LLM-server replicas every
    `HEALTH_POLL_SECONDS`, in the background: while one runs, reading the count costs a
    request nothing."""

    def __init__(self, app_name: str, config: AppConfig) -> None:
        self._app_name = app_name
        self._config = config
        self._running: int | None = None  # None until the first answer
        self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # the controller restarting: keep the last
                await self._refresh()
            await asyncio.sleep(HEALTH_POLL_SECONDS)

    async def _refresh(self) -> int:
        self._running = await asyncio.to_thread(self._ask_controller)
        return self._running

    async def running_replicas(self) -> int:
        """The last count; asked afresh when it was 0 (a refusal never rests on an old one)."""
        if self._running:
            return self._running
        return await self._refresh()

    async def require_replica(self) -> None:
        """Raise a 503 when no LLM-server replica runs."""
        if not await self.running_replicas():
            raise no_replica()

    async def response(self) -> JSONResponse:
        """200 with the body while a replica runs, else 503 with the same body (and
        `Retry-After`, as every 503)."""
        running = await self.running_replicas()
        body = Health(
            status="healthy" if running else "unhealthy",
            model=self._config.served_name,
            tensor_parallel_size=self._config.tensor_parallel_size,
            healthy_replicas=running,
        )
        if running:
            return JSONResponse(body.model_dump())
        return JSONResponse(
            body.model_dump(), status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}
        )

    def _ask_controller(self) -> int:
        app = serve.status().applications.get(self._app_name)
        deployment = app.deployments.get(LLM_SERVER_DEPLOYMENT) if app else None
        return deployment.replica_states.get(ReplicaState.RUNNING, 0) if deployment else 0
