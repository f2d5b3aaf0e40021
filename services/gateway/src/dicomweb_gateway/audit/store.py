"""The audit store: an append-only, hash-chained SQL table (SQLAlchemy 2; SQLite by default).

Each record keeps the message XML, the fields auditors filter on, and `hash` =
SHA-256(prev_hash, fields, message) where `prev_hash` is the hash of the record before it, so
changing, deleting or reordering any record breaks the chain and `verify` names the record.
`audit_head` holds the last sequence number and hash: it is the lock every writer takes (so the
chain stays linear with several worker processes) and it exposes a deleted tail.

SQLite: writers open `BEGIN IMMEDIATE` (one writer at a time across processes, others wait on
the busy timeout), WAL journal with `synchronous=NORMAL` (a committed record survives a crash of
the gateway; an OS crash or power loss may drop the last commits, never half of one: about 1 ms
per request instead of 5 ms with FULL), and triggers refuse UPDATE and DELETE so the table is
append-only even for careless SQL.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from .messages import AuditMessage, utc_timestamp

GENESIS = "0" * 64  # prev_hash of the first record

metadata = MetaData()

audit_record = Table(
    "audit_record",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("recorded_at", String(32), nullable=False, index=True),  # UTC, ...Z
    Column("event_id", String(16), nullable=False, index=True),
    Column("event_action", String(1), nullable=False),
    Column("event_types", String(200), nullable=False, default=""),
    Column("outcome", Integer, nullable=False),
    Column("user_id", String(256), nullable=True, index=True),
    Column("patients", Text, nullable=False, default=""),  # "|ZT-P001|ZT-P002|"
    Column("studies", Text, nullable=False, default=""),  # "|1.2.3|"
    Column("request_id", String(64), nullable=False, default="", index=True),
    Column("message", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

# The hashed fields, in a fixed order (the canonical form of a record).
HASHED = (
    "recorded_at", "event_id", "event_action", "event_types", "outcome", "user_id",
    "patients", "studies", "request_id", "message",
)  # fmt: skip

_APPEND_ONLY = (
    "CREATE TRIGGER IF NOT EXISTS audit_record_no_update BEFORE UPDATE ON audit_record "
    "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_record_no_delete BEFORE DELETE ON audit_record "
    "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END",
)


class AuditStoreError(Exception):
    """The store cannot be read or written."""


def record_hash(prev_hash: str, row: dict[str, Any]) -> str:
    canonical = json.dumps(
        [prev_hash, *[row[name] for name in HASHED]], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _joined(values: Sequence[str]) -> str:
    return "|" + "|".join(values) + "|" if values else ""


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None
    until: datetime | None = None
    user: str | None = None
    patient: str | None = None
    study: str | None = None
    outcome: int | None = None
    event_id: str | None = None
    request_id: str | None = None
    after_seq: int | None = None
    limit: int = 100
    offset: int = 0


class AuditStore:
    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self._sqlite = make_url(database_url).get_backend_name() == "sqlite"
        self._writer = self._engine(immediate=True)
        self._reader = self._engine(immediate=False) if self._sqlite else self._writer
        self._ready = False
        self._lock = threading.Lock()

    def _engine(self, *, immediate: bool) -> Engine:
        if not self._sqlite:
            return create_engine(self.url, pool_pre_ping=True)
        engine = create_engine(self.url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event issue BEGIN, not the sqlite3 module.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout = 30000")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    # --- schema ---------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the tables, triggers and head row once (idempotent, safe across workers)."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            try:
                with self._writer.begin() as conn:
                    metadata.create_all(conn)
                    if self._sqlite:
                        for statement in _APPEND_ONLY:
                            conn.exec_driver_sql(statement)
                    head = conn.execute(select(audit_head.c.id)).first()
                    if head is None:
                        conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS))
            except SQLAlchemyError as exc:
                raise AuditStoreError(f"audit store unavailable: {exc.__class__.__name__}") from exc
            self._ready = True

    # --- writing --------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Take the writer lock and release it: proves the store accepts writes right now."""
        self.ensure_schema()
        try:
            with self._writer.begin() as conn:
                conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1)).one()
        except SQLAlchemyError as exc:
            raise AuditStoreError(f"audit store not writable: {exc.__class__.__name__}") from exc

    def append(self, messages: Sequence[AuditMessage], request_id: str = "") -> list[int]:
        """Append messages in one transaction, chained after the current head."""
        return self.append_many([(messages, request_id)])

    def append_many(self, batches: Sequence[tuple[Sequence[AuditMessage], str]]) -> list[int]:
        """Append several requests' messages in ONE transaction (group commit): all are
        durable when this returns, or none is and AuditStoreError is raised."""
        rows = [
            self._row(message, request_id)
            for messages, request_id in batches
            for message in messages
        ]
        if not rows:
            return []
        self.ensure_schema()
        try:
            with self._writer.begin() as conn:
                head = conn.execute(
                    select(audit_head.c.seq, audit_head.c.hash)
                    .where(audit_head.c.id == 1)
                    .with_for_update()  # PostgreSQL row lock; SQLite has BEGIN IMMEDIATE
                ).one()
                seq, prev = int(head.seq), str(head.hash)
                values = []
                for row in rows:
                    seq += 1
                    row_hash = record_hash(prev, row)
                    values.append({"seq": seq, "prev_hash": prev, "hash": row_hash, **row})
                    prev = row_hash
                conn.execute(insert(audit_record), values)
                conn.execute(
                    update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=prev)
                )
                return [v["seq"] for v in values]
        except SQLAlchemyError as exc:
            raise AuditStoreError(f"audit write failed: {exc.__class__.__name__}") from exc

    @staticmethod
    def _row(message: AuditMessage, request_id: str) -> dict[str, Any]:
        return {
            "recorded_at": utc_timestamp(message.time),
            "event_id": message.event_id.code,
            "event_action": message.action,
            "event_types": " ".join(message.event_types),
            "outcome": message.outcome,
            "user_id": message.user,
            "patients": _joined(message.patients),
            "studies": _joined(message.studies),
            "request_id": request_id,
            "message": message.xml,
        }

    # --- reading --------------------------------------------------------------------------

    def search(self, filters: Filters) -> list[dict[str, Any]]:
        self.ensure_schema()
        c = audit_record.c
        query = select(audit_record).order_by(c.seq)
        if filters.since is not None:
            query = query.where(c.recorded_at >= utc_timestamp(filters.since))
        if filters.until is not None:
            query = query.where(c.recorded_at <= utc_timestamp(filters.until))
        if filters.user is not None:
            query = query.where(c.user_id == filters.user)
        if filters.patient is not None:
            query = query.where(c.patients.contains(f"|{filters.patient}|", autoescape=True))
        if filters.study is not None:
            query = query.where(c.studies.contains(f"|{filters.study}|", autoescape=True))
        if filters.outcome is not None:
            query = query.where(c.outcome == filters.outcome)
        if filters.event_id is not None:
            query = query.where(c.event_id == filters.event_id)
        if filters.request_id is not None:
            query = query.where(c.request_id == filters.request_id)
        if filters.after_seq is not None:
            query = query.where(c.seq > filters.after_seq)
        query = query.limit(filters.limit).offset(filters.offset)
        try:
            with self._reader.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise AuditStoreError(f"audit read failed: {exc.__class__.__name__}") from exc

    def iter_all(self) -> Iterator[dict[str, Any]]:
        with self._reader.connect() as conn:
            for r in conn.execute(select(audit_record).order_by(audit_record.c.seq)):
                yield dict(r._mapping)

    def head(self) -> tuple[int, str]:
        self.ensure_schema()
        with self._reader.connect() as conn:
            row = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
            return int(row.seq), str(row.hash)

    def last_seq(self) -> int:
        return self.head()[0]

    # --- verification ---------------------------------------------------------------------

    def verify(self) -> list[str]:
        """Walk the chain; every problem names the record it concerns (empty: intact)."""
        rows = list(self.iter_all())
        where = {r["hash"]: r["seq"] for r in rows}
        problems: list[str] = []
        expected_seq, expected_prev, last_seq = 1, GENESIS, 0
        for row in rows:
            seq = row["seq"]
            gap = seq != expected_seq
            if gap:
                missing = _span(expected_seq, seq - 1)
                problems.append(f"record {missing} deleted (sequence jumps to {seq})")
            if record_hash(row["prev_hash"], row) != row["hash"]:
                problems.append(f"record {seq} altered (its content does not match its hash)")
            if row["prev_hash"] != expected_prev:
                before = where.get(row["prev_hash"])
                if before is not None and before != last_seq:
                    problems.append(f"record {seq} reordered (written after record {before})")
                elif not gap:
                    problems.append(
                        f"record {last_seq} altered or replaced (record {seq} does not link to it)"
                    )
            expected_seq, expected_prev, last_seq = seq + 1, row["hash"], seq
        head_seq, head_hash = self.head()
        if head_seq != last_seq or (rows and head_hash != expected_prev):
            if head_seq > last_seq:
                missing = _span(last_seq + 1, head_seq)
                problems.append(f"record {missing} deleted (head at {head_seq})")
            else:
                problems.append(f"chain head does not match record {last_seq}")
        return problems

    def dispose(self) -> None:
        self._writer.dispose()
        if self._reader is not self._writer:
            self._reader.dispose()


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def now_utc() -> datetime:
    return datetime.fromtimestamp(time.time(), tz=UTC)


def drop_append_only_guard(conn: Connection) -> None:
    """For tamper tests and forensic tooling only: what an attacker with file access can do."""
    for name in ("audit_record_no_update", "audit_record_no_delete"):
        conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
