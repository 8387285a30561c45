"""GET /health: the service is healthy while at least one LLM-server replica is RUNNING, as
Serve's controller sees it (its health checks call the engine's)."""

import asyncio
import time

from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.schema import ReplicaState

from serve_app.api.protocol import Health
from serve_app.core.config import AppConfig
from serve_app.core.constants import HEALTH_CACHE_SECONDS, LLM_SERVER_DEPLOYMENT


class ServiceHealth:
    """Counts RUNNING LLM-server replicas of this app, asking the controller once a second at
    most, and answers /health from that count."""

    def __init__(self, app_name: str, config: AppConfig) -> None:
        self._app_name = app_name
        self._config = config
        self._checked_at = float("-inf")
        self._running = 0
        self._lock = asyncio.Lock()

    async def running_replicas(self) -> int:
        async with self._lock:
            if time.monotonic() - self._checked_at >= HEALTH_CACHE_SECONDS:
                self._running = await asyncio.to_thread(self._ask_controller)
                self._checked_at = time.monotonic()
        return self._running

    async def response(self) -> JSONResponse:
        """200 with the body while a replica runs, else 503 with the same body."""
        running = await self.running_replicas()
        body = Health(
            status="healthy" if running else "unhealthy",
            model=self._config.served_name,
            tensor_parallel_size=self._config.tensor_parallel_size,
            healthy_replicas=running,
        )
        return JSONResponse(body.model_dump(), status_code=200 if running else 503)

    def _ask_controller(self) -> int:
        app = serve.status().applications.get(self._app_name)
        deployment = app.deployments.get(LLM_SERVER_DEPLOYMENT) if app else None
        return deployment.replica_states.get(ReplicaState.RUNNING, 0) if deployment else 0
