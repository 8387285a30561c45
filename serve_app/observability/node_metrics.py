"""The Prometheus text of this node's Ray metrics agent: every replica's series on the node.

Ray gathers `ray.serve.metrics`, vLLM's Ray stat logger and Ray Serve's own metrics from
every worker of a node into one endpoint; GET /metrics on the ingress returns it, so a
one-container deployment exposes everything on its HTTP port.
"""

import asyncio
import urllib.request

import ray

from serve_app.core.errors import service_unavailable

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TIMEOUT_S = 5.0


class NodeMetrics:
    def __init__(self) -> None:
        node_id = ray.get_runtime_context().get_node_id()
        node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
        self.url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"

    async def text(self) -> str:
        try:
            return await asyncio.to_thread(self._fetch)
        except OSError as exc:
            raise service_unavailable(f"Ray's metrics agent did not answer: {exc}") from exc

    def _fetch(self) -> str:
        with urllib.request.urlopen(self.url, timeout=_TIMEOUT_S) as response:
            return response.read().decode()
