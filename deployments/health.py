"""Engine-replica health as Serve's controller sees it (its checks call the engine's)."""

import asyncio
import time

from ray import serve
from ray.serve.schema import ReplicaState

from serve_app.constants import HEALTH_CACHE_SECONDS, LLM_SERVER_DEPLOYMENT


class ReplicaHealth:
    """Counts RUNNING LLM-server replicas of this app; asks the controller once a second at most."""

    def __init__(self, app_name: str) -> None:
        self._app_name = app_name
        self._checked_at = float("-inf")
        self._running = 0
        self._lock = asyncio.Lock()

    async def running_replicas(self) -> int:
        async with self._lock:
            if time.monotonic() - self._checked_at >= HEALTH_CACHE_SECONDS:
                self._running = await asyncio.to_thread(self._ask_controller)
                self._checked_at = time.monotonic()
        return self._running

    def _ask_controller(self) -> int:
        app = serve.status().applications.get(self._app_name)
        deployment = app.deployments.get(LLM_SERVER_DEPLOYMENT) if app else None
        return deployment.replica_states.get(ReplicaState.RUNNING, 0) if deployment else 0
