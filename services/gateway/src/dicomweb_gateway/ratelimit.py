"""Per-client rate limits (AP-3, OWASP API4): a token bucket per client, 429 + Retry-After.

The key is the token's `client_id` once authenticated, the client address before that. Each
worker process keeps its own buckets and gets `requests_per_minute / workers`, so the total a
client can reach across workers is the configured rate.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .errors import GatewayError

_MAX_KEYS = 100_000


def too_many_requests(retry_after: int, detail: str) -> GatewayError:
    return GatewayError(
        429, "too_many_requests", "too many requests", detail, {"Retry-After": str(retry_after)}
    )


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute)  # a minute's allowance as burst
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def check(self, key: str) -> None:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.capacity, now)
            self._buckets[key] = bucket
            if len(self._buckets) > _MAX_KEYS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens < 1.0:
            wait = math.ceil((1.0 - bucket.tokens) / self.rate) if self.rate > 0 else 60
            raise too_many_requests(max(1, wait), f"rate limit for {key}")
        bucket.tokens -= 1.0
