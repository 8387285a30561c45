"""The rate-limiter deployment: every client's rate-limit buckets, shared by the ingress
replicas (the buckets' logic is `serve_app.api.rate_limits`)."""

from ray import serve

from serve_app.api.rate_limits import RateDecision, RateLimitBook
from serve_app.core.config import RateLimit
from serve_app.core.constants import RATE_LIMITER_DEPLOYMENT


# One replica (the state is its memory; lost on a restart, when every client starts with a
# full minute); no CPU reserved: a dict lookup per request, beside the ingress's work.
@serve.deployment(
    name=RATE_LIMITER_DEPLOYMENT,
    num_replicas=1,
    max_ongoing_requests=100_000,
    ray_actor_options={"num_cpus": 0},
)
class RateLimiter:
    """Admits and settles requests against each client's buckets."""

    def __init__(self) -> None:
        self._book = RateLimitBook()

    async def admit(self, client: str, limits: RateLimit, tokens: int) -> RateDecision:
        return self._book.admit(client, limits, tokens)

    async def settle(self, client: str, limits: RateLimit, reserved: int, used: int) -> None:
        self._book.settle(client, limits, reserved, used)
