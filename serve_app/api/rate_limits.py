"""Rate limits per client, requests and tokens per minute, as OpenAI applies and reports them.

A client is its API key's name, or its address when API keys are off (the last
`X-Forwarded-For` hop when a proxy in front sends one, else the peer: behind Serve's HAProxy
without such a proxy, every client without a key shares one allowance). Each limit is a
bucket that holds one minute's allowance and refills continuously. A generation request is
admitted when its client's buckets hold one request and the tokens it may use: the prompt's
estimate (characters / 4, as OpenAI estimates it) plus `max_tokens` times `n` (unset: the
context left after the prompt); what it did not use is given back when it ends.

Every client's buckets live in one `RateLimiter` deployment (`deployments/rate_limiter.py`),
so limits hold across ingress replicas: admission costs a request one call to it, the
settlement is sent without waiting, and with no limit configured nothing is called. Should
the limiter not answer, requests are admitted (and a warning logged): a rate limit never
takes the service down.
"""

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request

from serve_app.api.middleware.auth import API_KEY_NAME
from serve_app.core.config import RateLimit, RateLimits
from serve_app.core.errors import rate_limit_exceeded

logger = logging.getLogger("ray.serve")

Limit = Literal["requests", "tokens"]
WINDOW_S = 60.0
CHARS_PER_TOKEN = 4
# How often the book forgets clients whose buckets are full again (as good as new).
PRUNE_EVERY_S = 60.0


def duration(seconds: float) -> str:
    """A duration as OpenAI writes it in `x-ratelimit-reset-*`: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{rest_text}" if minutes else rest_text


@dataclass
class Bucket:
    """One limit's allowance: full at `capacity`, refilled at `capacity` per minute."""

    capacity: float
    level: float
    updated: float

    def refill(self, capacity: float, now: float) -> None:
        """Bring the level to `now`, under a capacity that may have changed since."""
        self.level = min(capacity, self.level + (now - self.updated) * capacity / WINDOW_S)
        self.capacity, self.updated = capacity, now

    def wait_s(self, amount: float) -> float:
        """Seconds until the bucket holds `amount`."""
        return max(0.0, amount - self.level) * WINDOW_S / self.capacity

    @property
    def full(self) -> bool:
        return self.level >= self.capacity


class RateDecision(BaseModel):
    """The book's answer to one admission: OpenAI's `x-ratelimit-*` headers, and, when
    refused, the limit hit, how long to wait and why."""

    headers: dict[str, str]
    refused: Limit | None = None
    retry_after_s: int = 0
    message: str = ""


class RateLimitBook:
    """Every client's buckets, one per configured limit (the state of `RateLimiter`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, Limit], Bucket] = {}
        self._pruned_at = clock()

    def admit(self, client: str, limits: RateLimit, tokens: int) -> RateDecision:
        """Take one request and `tokens` from the client's buckets if they hold them.

        A request asking more tokens than a minute's allowance is admitted when the bucket
        is full, leaving it in debt, rather than never.
        """
        now = self._clock()
        self._prune(now)
        wanted = {"requests": 1, "tokens": tokens}
        buckets = {
            limit: self._bucket(client, limit, capacity, now)
            for limit, capacity in _capacities(limits).items()
        }
        for limit, bucket in buckets.items():
            needed = min(wanted[limit], bucket.capacity)
            if bucket.level < needed:
                wait = bucket.wait_s(needed)
                return RateDecision(
                    headers=_headers(buckets),
                    refused=limit,
                    retry_after_s=max(1, math.ceil(wait)),
                    message=(
                        f"Rate limit reached for {client} on {limit} per minute: limit "
                        f"{bucket.capacity:.0f}, remaining {max(0, int(bucket.level))}, "
                        f"requested {wanted[limit]}. Please try again in {duration(wait)}."
                    ),
                )
        for limit, bucket in buckets.items():
            bucket.level -= wanted[limit]
        return RateDecision(headers=_headers(buckets))

    def settle(self, client: str, limits: RateLimit, reserved: int, used: int) -> None:
        """Give back the tokens a finished request reserved but did not use."""
        capacity = limits.tokens_per_minute
        bucket = self._buckets.get((client, "tokens"))
        if capacity is None or bucket is None:
            return
        bucket.refill(capacity, self._clock())
        bucket.level = min(capacity, bucket.level + max(0, reserved - used))

    def _bucket(self, client: str, limit: Limit, capacity: float, now: float) -> Bucket:
        bucket = self._buckets.setdefault((client, limit), Bucket(capacity, capacity, now))
        bucket.refill(capacity, now)
        return bucket

    def _prune(self, now: float) -> None:
        if now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        for key, bucket in list(self._buckets.items()):
            bucket.refill(bucket.capacity, now)
            if bucket.full:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def _capacities(limits: RateLimit) -> dict[Limit, float]:
    configured: dict[Limit, int | None] = {
        "requests": limits.requests_per_minute,
        "tokens": limits.tokens_per_minute,
    }
    return {limit: float(value) for limit, value in configured.items() if value is not None}


def _headers(buckets: dict[Limit, Bucket]) -> dict[str, str]:
    headers = {}
    for limit, bucket in buckets.items():
        headers[f"x-ratelimit-limit-{limit}"] = f"{bucket.capacity:.0f}"
        headers[f"x-ratelimit-remaining-{limit}"] = str(max(0, math.floor(bucket.level)))
        headers[f"x-ratelimit-reset-{limit}"] = duration(bucket.wait_s(bucket.capacity))
    return headers


def client_of(raw: Request) -> tuple[str, str | None]:
    """(the client's name for the limits, its API key's name or None)."""
    key_name = raw.scope.get("state", {}).get(API_KEY_NAME)
    if key_name is not None:
        return key_name, key_name
    forwarded = raw.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip(), None
    return (raw.client.host if raw.client else "unknown"), None


def requested_tokens(request: Any, texts: list[str], max_model_len: int) -> int:
    """The tokens a generation request may use: the prompt's estimate plus its maximum
    output for each of its completions."""
    prompt = _prompt_tokens(request, texts)
    most = next(
        (
            value
            for name in ("max_completion_tokens", "max_tokens", "max_output_tokens")
            if isinstance(value := getattr(request, name, None), int)
        ),
        None,
    )
    output = max(0, max_model_len - prompt) if most is None else max(0, most)
    n = getattr(request, "n", None)
    choices = n if isinstance(n, int) and n > 0 else 1
    return prompt + output * choices * _prompt_count(_completion_prompt(request))


def _completion_prompt(request: Any) -> Any:
    """A completion request's prompt (a Responses request's `prompt` is something else)."""
    return None if hasattr(request, "input") else getattr(request, "prompt", None)


def _prompt_tokens(request: Any, texts: list[str]) -> int:
    tokens = math.ceil(sum(map(len, texts)) / CHARS_PER_TOKEN)
    prompt = _completion_prompt(request)  # completions may send token ids
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        tokens += len(prompt)
    elif isinstance(prompt, list):
        tokens += sum(len(item) for item in prompt if isinstance(item, list))
    return tokens


def _prompt_count(prompt: Any) -> int:
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


@dataclass
class Admission:
    """An admitted request's reservation, and the headers its response carries."""

    client: str
    limits: RateLimit
    reserved: int
    headers: dict[str, str]


class RateLimitClient:
    """The ingress's side: admits requests through the shared `RateLimiter`."""

    def __init__(self, limiter: DeploymentHandle, limits: RateLimits) -> None:
        self._limiter = limiter
        self._limits = limits
        self._settling: set[asyncio.Task[None]] = set()

    def configure(self, limits: RateLimits) -> None:
        self._limits = limits

    async def admit(self, raw: Request, tokens: int) -> Admission | None:
        """Admit the request (None: no limit applies) or raise a 429."""
        if not self._limits.enabled:
            return None
        client, key_name = client_of(raw)
        limits = self._limits.for_client(key_name)
        if not limits.enabled:
            return None
        try:
            decision: RateDecision = await self._limiter.admit.remote(client, limits, tokens)
        except Exception:
            logger.warning("The rate limiter did not answer; request admitted", exc_info=True)
            return None
        if decision.refused is not None:
            raise rate_limit_exceeded(
                decision.refused, decision.message, decision.retry_after_s, decision.headers
            )
        return Admission(client, limits, tokens, decision.headers)

    def settle(self, admission: Admission, used: int) -> None:
        """Give back what the request did not use, without waiting for the answer."""
        task = asyncio.create_task(self._settle(admission, used))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, admission: Admission, used: int) -> None:
        try:
            await self._limiter.settle.remote(
                admission.client, admission.limits, admission.reserved, used
            )
        except Exception:
            logger.warning("The rate limiter did not take a settlement", exc_info=True)
