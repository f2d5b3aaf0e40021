"""ratelimit.py and replay.py: per-client buckets (AP-3) and the shared DPoP jti cache (ID-5)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from dicomweb_gateway import replay
from dicomweb_gateway.errors import GatewayError
from dicomweb_gateway.ratelimit import RateLimiter
from dicomweb_gateway.replay import SqlReplayCache, make_engine
from sqlalchemy.exc import OperationalError


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


def test_replay_setup_survives_a_concurrent_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers race to create the table: the loser's "already exists" is not fatal."""
    real_create_all = replay._metadata.create_all
    calls: list[int] = []

    def another_worker_won(bind: Any, **kw: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            # Another worker creates the table between this one's check and its CREATE TABLE.
            real_create_all(bind)
            raise OperationalError("CREATE TABLE dpop_jti", {}, Exception("already exists"))
        real_create_all(bind, **kw)

    monkeypatch.setattr(replay._metadata, "create_all", another_worker_won)

    async def run() -> bool:
        cache = SqlReplayCache(make_engine(f"sqlite:///{tmp_path}/g.db"))
        await cache.setup()
        ok = await cache.first_use("k", time.time() + 60)
        await cache.close()
        return ok

    assert asyncio.run(run()) is True
    assert len(calls) == 2


def test_replay_setup_reraises_other_database_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(bind: Any, **kw: Any) -> None:
        raise OperationalError("CREATE TABLE dpop_jti", {}, Exception("disk I/O error"))

    monkeypatch.setattr(replay._metadata, "create_all", broken)

    async def run() -> None:
        cache = SqlReplayCache(make_engine(f"sqlite:///{tmp_path}/g.db"))
        try:
            await cache.setup()
        finally:
            await cache.close()

    with pytest.raises(OperationalError, match="disk I/O error"):
        asyncio.run(run())
