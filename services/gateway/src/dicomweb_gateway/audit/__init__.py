"""Audit trail (DICOM PS3.15 A.5): every request, allowed or denied, leaves a message.

The gateway calls `preflight()` before forwarding anything (the store must be writable, else
503: fail closed, AO-2) and `record(ctx)` once at the end of every request, allowed or denied.
Audit is a notification: `record` never changes the outcome already decided, but a message that
cannot be stored is an error (503), because an unaudited answer is not allowed.

Parts: `messages` (what a request yields, as A.5 XML), `store` (hash-chained table), `syslog`
(optional RFC 5424/5425 shipping with a spool), `routes` (`GET /audit` for auditors), `schema`
(the A.5.1 structure, used by tests and `verify`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..context import RequestContext
from ..errors import service_unavailable
from ..store.engines import pool_of
from .messages import AuditMessage, Participants, host_of, messages_for
from .spill import Spill, retry_delay
from .store import AuditStore, AuditStoreError, Filters, now_utc
from .syslog import Spool, SyslogShipper

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["Auditor", "router"]

log = logging.getLogger(__name__)

PREFLIGHT_CACHE_SECONDS = 1.0  # a proven-writable store is trusted this long (cheap per request)


class Auditor:
    """One instance per worker process, on `app.state.auditor`."""

    def __init__(
        self,
        store: AuditStore | None = None,
        participants: Participants | None = None,
        shipper: SyslogShipper | None = None,
        public_url: str = "",
        spill_dir: Path | None = None,
    ) -> None:
        # Without a store (the app factory's placeholder), messages are kept in memory only.
        self.store = store
        self.participants = participants or Participants(
            "zt-gateway", "localhost", "archive", "localhost"
        )
        self.shipper = shipper
        self.public_url = public_url
        self.memory: list[AuditMessage] = []
        self._writable_until = 0.0
        # Group commit: records waiting for the next transaction, and the task writing them.
        self._queue: list[tuple[list[AuditMessage], str, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        # Records whose commit failed, until the chain takes them (audit/spill.py).
        self.spill = Spill(spill_dir)
        self._recovery: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Auditor:
        """Build from `audit.*` settings; never touches the store (a down store gives 503s)."""
        audit = settings.audit
        participants = Participants(
            source_id=audit.source_id,
            gateway_host=host_of(settings.public_url),
            archive_id=settings.archive.url,
            archive_host=host_of(settings.archive.url),
        )
        shipper = None
        if audit.syslog is not None:
            spool = Spool(audit.syslog.spool_dir)
            tls = SyslogShipper.tls_context(
                audit.syslog.ca_cert, audit.syslog.client_cert, audit.syslog.client_key
            )
            shipper = SyslogShipper(
                spool, audit.syslog.host, audit.syslog.port, tls, app=audit.source_id
            )
        pool = pool_of(settings)
        return cls(
            AuditStore(audit.database_url, pool),
            participants,
            shipper,
            settings.public_url,
            _spill_dir(settings),
        )

    async def start(self) -> None:
        """Called by the app's lifespan: append what an earlier gateway left in the spill and
        resume delivering what an earlier run left spooled."""
        if self.store is not None:
            await asyncio.to_thread(self.spill.adopt_orphans)
            if self.spill.pending:
                self._recover()
        if self.shipper is not None:
            await asyncio.to_thread(self.shipper.spool.prepare)
            if self.shipper.spool.pending():
                self.shipper.wake()

    async def preflight(self) -> None:
        """Raise 503 unless the store accepted a write lock within the last second and no
        record is waiting in the spill (AO-2: nothing is forwarded while records can be lost)."""
        if self.store is None:
            return
        if self.spill.pending:
            raise service_unavailable(
                f"audit store recovering: {len(self.spill.rows)} records not yet in the chain"
            )
        if time.monotonic() < self._writable_until:
            return
        try:
            await asyncio.to_thread(self.store.check_writable)
        except AuditStoreError as exc:
            raise service_unavailable(str(exc)) from None
        self._writable_until = time.monotonic() + PREFLIGHT_CACHE_SECONDS

    async def record(self, ctx: RequestContext) -> None:
        """Store the request's messages before the answer leaves; 503 if that is impossible."""
        messages = messages_for(ctx, self.participants, now_utc())
        if not messages:
            return
        if self.store is None:
            self.memory.extend(messages)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((messages, ctx.request_id, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        try:
            # The answer waits until its own record is committed (durable), not just queued.
            await done
        except AuditStoreError as exc:
            raise service_unavailable(str(exc)) from None
        if self.shipper is not None:
            await self._ship(messages)

    async def _write_queued(self) -> None:
        """Commit everything queued, one transaction per round, off the event loop.

        While one transaction is being written, concurrent requests queue up and share the
        next one (group commit): one commit per round instead of one per request. A failed
        transaction fails every request in it (each answers 503: fail closed).
        """
        assert self.store is not None
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await asyncio.to_thread(
                    self.store.append_many, [(messages, rid) for messages, rid, _ in batch]
                )
            except Exception as exc:
                self._writable_until = 0.0
                error = (
                    exc
                    if isinstance(exc, AuditStoreError)
                    else AuditStoreError(f"audit write failed: {exc.__class__.__name__}")
                )
                # The requests may have reached the archive already: keep their records.
                rows = [
                    AuditStore._row(message, rid)
                    for messages, rid, _ in batch
                    for message in messages
                ]
                await asyncio.to_thread(self.spill.add, rows)
                log.error(
                    "%s; %d records of %d requests kept in the audit spill, every request "
                    "refused (503) until they are in the chain",
                    error,
                    len(rows),
                    len(batch),
                )
                self._recover()
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(error)
            else:
                for _, _, done in batch:
                    if not done.done():
                        done.set_result(None)

    def _recover(self) -> None:
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._drain_spill(), name="audit-spill")

    async def _drain_spill(self) -> None:
        """Append the spilled records once the store takes writes again (then requests flow)."""
        assert self.store is not None
        attempt = 0
        while self.spill.pending:
            rows: list[dict[str, Any]] = list(self.spill.rows)
            try:
                await asyncio.to_thread(self.store.append_rows, rows, True)
            except Exception as exc:
                if attempt % 20 == 0:
                    log.warning("audit spill: %d records still waiting: %s", len(rows), exc)
                await asyncio.sleep(retry_delay(attempt))
                attempt += 1
                continue
            await asyncio.to_thread(self.spill.committed, len(rows))
            log.warning(
                "audit spill: %d records appended to the chain; accepting requests", len(rows)
            )

    async def _ship(self, messages: list[AuditMessage]) -> None:
        assert self.shipper is not None
        shipper = self.shipper
        try:
            await asyncio.to_thread(_spool_all, shipper, messages)
        except OSError as exc:
            # The hash-chained store holds the record; the spool is a delivery aid.
            log.error("audit spool write failed: %s", exc)
            return
        shipper.wake()

    async def search(self, filters: Filters) -> list[dict[str, object]]:
        if self.store is None:
            return []
        try:
            return await asyncio.to_thread(self.store.search, filters)
        except AuditStoreError as exc:
            raise service_unavailable(str(exc)) from None

    async def close(self) -> None:
        if self._writer is not None and not self._writer.done():
            await self._writer
        if self._recovery is not None and not self._recovery.done():
            self._recovery.cancel()  # what is left stays in the spill file for the next start
        self.spill.close()
        if self.shipper is not None:
            await self.shipper.close()
        if self.store is not None:
            self.store.dispose()


def _spill_dir(settings: Settings) -> Path | None:
    configured = getattr(settings.audit, "spill_dir", None)
    if configured:
        return Path(configured)
    run_dir = getattr(settings, "run_dir", None)
    if not run_dir:
        return None
    # One directory per audit store: a gateway adopts only spills meant for its own chain.
    import hashlib

    store = hashlib.sha256(str(settings.audit.database_url).encode()).hexdigest()[:16]
    return Path(run_dir) / "audit-spill" / store


def _spool_all(shipper: SyslogShipper, messages: list[AuditMessage]) -> None:
    for message in messages:
        shipper.enqueue(message.xml, message.time)


from .routes import router  # noqa: E402 - the router needs Auditor defined first
