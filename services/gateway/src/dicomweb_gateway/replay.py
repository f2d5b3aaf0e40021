"""The DPoP `jti` replay cache (RFC 9449 section 11.1), shared by every worker process.

It lives in the gateway's SQL database (`database_url`) rather than in process memory: with
several uvicorn workers, or several gateway replicas on one PostgreSQL database, a proof
replayed to another worker or replica must still be refused (ID-5, AO-3). The primary key
decides: of two concurrent first uses of one `jti`, the database lets exactly one insert win.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .store.engines import DEFAULT_POOL, PoolOptions, postgres_options
from .store.engines import async_url as _async_url

_SCHEMA_LOCK = 0x5A7_0001  # the same key as store.db.SCHEMA_LOCK
_metadata = sa.MetaData()
dpop_jti = sa.Table(
    "dpop_jti",
    _metadata,
    sa.Column("key", sa.String(400), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


def async_url(url: str) -> str:
    """sqlite:///x -> sqlite+aiosqlite:///x; postgresql:// -> postgresql+psycopg:// (async)."""
    return _async_url(url).render_as_string(hide_password=False)


def make_engine(url: str, pool: PoolOptions = DEFAULT_POOL) -> AsyncEngine:
    target = _async_url(url)
    if target.get_backend_name() == "postgresql":
        return create_async_engine(target, **postgres_options(pool))
    engine = create_async_engine(target, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: object, _record: object) -> None:
            cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
            # Several worker processes share the file: WAL and a busy timeout, not errors.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            # No sync per proof: a power cut loses at most the newest jtis, whose proofs expire
            # within the proof lifetime anyway.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return engine


class SqlReplayCache:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._ready = False
        self._last_purge = 0.0

    async def setup(self, attempts: int = 5) -> None:
        # Every worker runs this at start-up against the same database. Two workers can race
        # between create_all's existence check and its CREATE TABLE; the loser gets "already
        # exists", which is the state it wanted, so it checks again instead of dying (a dead
        # worker makes uvicorn stop the whole gateway).
        for attempt in range(1, attempts + 1):
            try:
                async with self._engine.begin() as conn:
                    if conn.dialect.name == "postgresql":
                        # Replicas start together: one creates the table, the others wait.
                        await conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK}
                        )
                    await conn.run_sync(_metadata.create_all)
                break
            except DatabaseError as exc:
                if "already exists" not in str(exc) or attempt == attempts:
                    raise
        self._ready = True

    async def first_use(self, key: str, expires_at: float) -> bool:
        if not self._ready:
            await self.setup()
        now = time.time()
        async with self._engine.begin() as conn:
            if now - self._last_purge > 30:
                self._last_purge = now
                await conn.execute(sa.delete(dpop_jti).where(dpop_jti.c.expires_at < now))
            try:
                async with conn.begin_nested():
                    await conn.execute(sa.insert(dpop_jti).values(key=key, expires_at=expires_at))
            except IntegrityError:
                row = await conn.execute(
                    sa.select(dpop_jti.c.expires_at).where(dpop_jti.c.key == key)
                )
                expiry = row.scalar_one_or_none()
                if expiry is not None and expiry < now:
                    await conn.execute(
                        sa.update(dpop_jti)
                        .where(dpop_jti.c.key == key)
                        .values(expires_at=expires_at)
                    )
                    return True
                return False
        return True

    async def ping(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        await self._engine.dispose()
