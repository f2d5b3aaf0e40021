"""ratelimit.py and replay.py: per-client buckets (AP-3) and the shared DPoP jti cache (ID-5)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from dicomweb_gateway.errors import GatewayError
from dicomweb_gateway.ratelimit import RateLimiter
from dicomweb_gateway.replay import SqlReplayCache, make_engine


@pytest.mark.control("AP-3")
def test_bucket_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    for _ in range(60):
        limiter.check("a")
    with pytest.raises(GatewayError) as caught:
        limiter.check("a")
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "1"
    limiter.check("b")  # other clients are not affected
    now[0] += 1.0
    limiter.check("a")


@pytest.mark.control("ID-5")
def test_replay_shared_between_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/g.db"

    async def run() -> list[bool]:
        first, second = SqlReplayCache(make_engine(url)), SqlReplayCache(make_engine(url))
        expiry = time.time() + 60
        results = [
            await first.first_use("k", expiry),
            await second.first_use("k", expiry),
            await second.first_use("other", expiry),
        ]
        await first.first_use("old", time.time() - 1)
        results.append(await second.first_use("old", expiry))  # expired entries are reusable
        await first.close()
        await second.close()
        return results

    assert asyncio.run(run()) == [True, False, True, True]
