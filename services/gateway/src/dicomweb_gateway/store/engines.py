"""SQL engines for every store (policy and study index, DPoP replay cache, audit): one place
that turns a configured URL into drivers, pool and timeouts (docs/stores.md).

- `sqlite:///path`: the embedded default (`make up`): pysqlite for migrations and the audit
  store, aiosqlite for requests.
- `postgresql://user@host:port/db?sslmode=verify-full...`: production, several gateway
  replicas sharing one database: psycopg 3 for both (its async mode for requests). A pool per
  engine with bounded size and a bounded wait for a connection; each connection has a connect
  timeout and server-side statement, lock and idle-in-transaction timeouts, so a stalled
  server turns into an error (503, fail closed) within seconds, never a hung request. Pooled
  connections are pinged before use, so the gateway recovers by itself once the server is
  back. libpq parameters in the URL's query (`sslmode`, `sslrootcert`, `passfile`,
  `connect_timeout`, ...) are passed through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

SQLITE_TIMEOUT_SECONDS = 15  # several gateway workers share one SQLite file


@dataclass(frozen=True)
class PoolOptions:
    """Connection pool and timeouts for PostgreSQL (settings `database_pool`)."""

    size: int = 5  # connections kept open per engine and process
    max_overflow: int = 10  # extra connections under load, closed when returned
    timeout_seconds: float = 5.0  # wait for a free pooled connection, then fail (503)
    recycle_seconds: int = 1800  # reopen connections older than this
    connect_timeout_seconds: int = 3
    statement_timeout_seconds: int = 15
    lock_timeout_seconds: int = 10
    idle_in_transaction_timeout_seconds: int = 60


DEFAULT_POOL = PoolOptions()


def backend(database_url: str | URL) -> str:
    name = make_url(database_url).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        raise ValueError(f"database_url: unsupported database {name!r} (sqlite or postgresql)")
    return name


def sync_url(database_url: str | URL) -> URL:
    url = make_url(database_url)
    if backend(url) == "sqlite":
        return url.set(drivername="sqlite")
    return url.set(drivername="postgresql+psycopg")


def async_url(database_url: str | URL) -> URL:
    url = make_url(database_url)
    if backend(url) == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    return url.set(drivername="postgresql+psycopg")  # psycopg 3 in its async mode


def postgres_options(pool: PoolOptions = DEFAULT_POOL) -> dict[str, Any]:
    """create_engine / create_async_engine keyword arguments for PostgreSQL."""
    server = (
        f"-c statement_timeout={pool.statement_timeout_seconds * 1000} "
        f"-c lock_timeout={pool.lock_timeout_seconds * 1000} "
        "-c idle_in_transaction_session_timeout="
        f"{pool.idle_in_transaction_timeout_seconds * 1000}"
    )
    return {
        "pool_size": pool.size,
        "max_overflow": pool.max_overflow,
        "pool_timeout": pool.timeout_seconds,
        "pool_recycle": pool.recycle_seconds,
        "pool_pre_ping": True,
        "connect_args": {
            "connect_timeout": pool.connect_timeout_seconds,
            "options": server,
            "application_name": "dicomweb-gateway",
        },
    }


def unavailable(exc: BaseException) -> bool:
    """Is this the database being unreachable (503, fail closed), not a bug or a conflict?"""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def pool_of(settings: Any) -> PoolOptions:
    """The settings' `database_pool` (defaults when a settings object has none)."""
    section = getattr(settings, "database_pool", None)
    options = getattr(section, "options", None)
    return options() if callable(options) else DEFAULT_POOL
