"""The audit store: an append-only, hash-chained SQL table (SQLAlchemy 2; SQLite by default).

Each record keeps the message XML, the fields auditors filter on, and `hash` =
SHA-256(prev_hash, fields, message) where `prev_hash` is the hash of the record before it, so
changing, deleting or reordering any record breaks the chain and `verify` names the record.
`audit_head` holds the last sequence number and hash: it is the lock every writer takes (so the
chain stays linear with several worker processes) and it exposes a deleted tail.

PostgreSQL (several gateway replicas appending to one chain): the writer locks the
`audit_head` row (`SELECT ... FOR UPDATE`) first in its transaction, reads the previous hash and
sequence there, inserts its records and moves the head, then commits: appends from every
process are serialized on that row lock, so the chain stays linear, and a writer killed
mid-append leaves nothing (the transaction rolls back, the head is unchanged). Plain-SQL
UPDATE and DELETE are refused by triggers, as on SQLite; the schema is created once under an
advisory lock. The engine has a bounded pool and timeouts (store/engines.py).

SQLite: writers open `BEGIN IMMEDIATE` (one writer at a time across processes, others wait on
the busy timeout), WAL journal with `synchronous=NORMAL` (a committed record survives a crash of
the gateway; an OS crash or power loss may drop the last commits, never half of one: about 1 ms
per request instead of 5 ms with FULL), and triggers refuse UPDATE and DELETE so the table is
append-only even for careless SQL.

Searches by patient or study use the relation `audit_object` (record seq, kind, exact id),
filled in the same transaction as the record itself, never string matching (VA-7). The columns
`patients` and `studies` hold JSON arrays (hashed with the record); the relation is derived from
them, and `verify` checks that it still agrees. `audit_schema` holds the schema version: a store
written by an earlier version gets the relation filled once, under the writer lock.

`verify` reports tamper evidence (the chain and the relation); `check_content` reports records
whose message does not have the A.5.1 structure. The two are separate so that a malformed
record can never hide (or be mistaken for) tampering.
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
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
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

from ..store.engines import DEFAULT_POOL, PoolOptions, postgres_options, sync_url
from .messages import AuditMessage, utc_timestamp, xml_safe
from .schema import validate

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
    # JSON arrays, e.g. ["ZT-P001"] ("" when none; "|a|b|" in stores of schema version 1)
    Column("patients", Text, nullable=False, default=""),
    Column("studies", Text, nullable=False, default=""),
    Column("request_id", String(64), nullable=False, default="", index=True),
    Column("message", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# The exact relation record -> participant object, for searches by patient or study (VA-7).
audit_object = Table(
    "audit_object",
    metadata,
    Column("seq", Integer, nullable=False),
    Column("record_hash", String(64), nullable=False),  # ties the row to the record's content
    Column("kind", String(16), nullable=False),  # "patient" | "study"
    Column("object_id", Text, nullable=False),
    PrimaryKeyConstraint("seq", "kind", "object_id"),
    Index("ix_audit_object_lookup", "kind", "object_id", "seq"),
)

audit_schema = Table(
    "audit_schema",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
)
SCHEMA_VERSION = 2  # 1: no audit_object relation, "|a|b|" columns; 2: relation, JSON columns

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

_APPEND_ONLY = tuple(
    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
    "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END"
    for table in ("audit_record", "audit_object")
    for verb in ("UPDATE", "DELETE")
)


_PG_APPEND_ONLY = (
    "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'audit records are append-only'; END $$",
    *(
        f"CREATE OR REPLACE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
        for table in ("audit_record", "audit_object")
        for verb in ("UPDATE", "DELETE", "TRUNCATE")
    ),
)
_SCHEMA_LOCK = 0x5A7_0002  # pg_advisory_xact_lock key: one process creates the schema


class AuditStoreError(Exception):
    """The store cannot be read or written."""


class AuditStoreFull(AuditStoreError):
    """The store's disk (or quota) is full: no record can be added until space is freed."""


def _failure(what: str, exc: SQLAlchemyError) -> AuditStoreError:
    """A clear error for the log and the 503 detail; a full disk is named as such."""
    text_ = str(getattr(exc, "orig", exc)).lower()
    if any(
        m in text_ for m in ("disk is full", "no space left", "could not extend file", "disk full")
    ):
        return AuditStoreFull(
            f"{what}: audit store full (no space left on its disk); requests are refused "
            "until space is freed"
        )
    return AuditStoreError(f"{what}: {exc.__class__.__name__}")


def record_hash(prev_hash: str, row: dict[str, Any]) -> str:
    canonical = json.dumps(
        [prev_hash, *[row[name] for name in HASHED]], ensure_ascii=False, separators=(",", ":")
    )
    # surrogateescape: a tampered row holding bytes that are not UTF-8 (read back as escapes)
    # still hashes, to a value that does not match: it is reported as altered, not unreadable.
    return hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()


def _joined(values: Sequence[str]) -> str:
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":")) if values else ""


def split_ids(column: object) -> list[str]:
    """The ids a `patients`/`studies` column holds (JSON array; "|a|b|" in version-1 rows)."""
    if not isinstance(column, str) or not column:
        return []
    if column.startswith("["):
        try:
            values = json.loads(column)
        except ValueError:
            return []
        return [str(v) for v in values] if isinstance(values, list) else []
    return [v for v in column.split("|") if v]


def _relation(row: dict[str, Any]) -> list[dict[str, Any]]:
    pairs = {("patient", p) for p in split_ids(row["patients"])}
    pairs |= {("study", s) for s in split_ids(row["studies"])}
    return [
        {"seq": row["seq"], "record_hash": row["hash"], "kind": kind, "object_id": oid}
        for kind, oid in sorted(pairs)
    ]


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
    def __init__(self, database_url: str, pool: PoolOptions = DEFAULT_POOL) -> None:
        self.url = database_url
        self._sqlite = make_url(database_url).get_backend_name() == "sqlite"
        self._pool = pool
        self._writer = self._engine(immediate=True)
        self._reader = self._engine(immediate=False) if self._sqlite else self._writer
        self._ready = False
        self._lock = threading.Lock()

    def _engine(self, *, immediate: bool) -> Engine:
        if not self._sqlite:
            return create_engine(sync_url(self.url), **postgres_options(self._pool))
        engine = create_engine(self.url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event issue BEGIN, not the sqlite3 module.
            dbapi_connection.isolation_level = None
            # Bytes that are not UTF-8 (only a tampered file has them) are read as escapes
            # instead of failing the read: `verify` then names the record as altered.
            dbapi_connection.text_factory = _lenient_text
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
                    if not self._sqlite:
                        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
                    metadata.create_all(conn)
                    for statement in _APPEND_ONLY if self._sqlite else _PG_APPEND_ONLY:
                        conn.exec_driver_sql(statement)
                    head = conn.execute(select(audit_head.c.id)).first()
                    if head is None:
                        conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS))
                    _migrate(conn)
            except SQLAlchemyError as exc:
                raise _failure("audit store unavailable", exc) from exc
            self._ready = True

    # --- writing --------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Take the writer lock and release it: proves the store accepts writes right now."""
        self.ensure_schema()
        try:
            with self._writer.begin() as conn:
                conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1)).one()
        except SQLAlchemyError as exc:
            raise _failure("audit store not writable", exc) from exc

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
        return self.append_rows(rows)

    def append_rows(self, rows: Sequence[dict[str, Any]], recovered: bool = False) -> list[int]:
        """Chain rows (`_row` dicts) after the current head, in one transaction.

        `recovered`: rows spilled earlier by a writer whose commit failed (audit/spill.py); one
        already in the chain (a commit that succeeded although its acknowledgement was lost)
        is not added twice: same request id, time, event and message.
        """
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
                if recovered:
                    rows = [row for row in rows if not _present(conn, row)]
                    if not rows:
                        return []
                seq, prev = int(head.seq), str(head.hash)
                values = []
                for row in rows:
                    seq += 1
                    row_hash = record_hash(prev, row)
                    values.append({"seq": seq, "prev_hash": prev, "hash": row_hash, **row})
                    prev = row_hash
                conn.execute(insert(audit_record), values)
                related = [pair for v in values for pair in _relation(v)]
                if related:
                    conn.execute(insert(audit_object), related)
                conn.execute(
                    update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=prev)
                )
                return [v["seq"] for v in values]
        except SQLAlchemyError as exc:
            raise _failure("audit write failed", exc) from exc

    @staticmethod
    def _row(message: AuditMessage, request_id: str) -> dict[str, Any]:
        return {
            "recorded_at": utc_timestamp(message.time),
            "event_id": message.event_id.code,
            "event_action": message.action,
            "event_types": " ".join(message.event_types),
            "outcome": message.outcome,
            "user_id": None if message.user is None else xml_safe(message.user),
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
            query = query.where(c.user_id == xml_safe(filters.user))
        # Exact relations, never substring matching (VA-7). Stored ids went through `xml_safe`,
        # so the searched value does too (it is injective: only equal inputs match).
        if filters.patient is not None:
            query = query.where(c.seq.in_(_related("patient", filters.patient)))
        if filters.study is not None:
            query = query.where(c.seq.in_(_related("study", filters.study)))
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
        """Tamper evidence: walk the chain, then check the relation against the hashed columns.

        Every finding names the record it concerns (empty: intact). Message content is not
        looked at here (see `check_content`), so a malformed message can never hide tampering.
        """
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
        if not problems:
            # With a broken chain the relation is untrustworthy anyway and its mismatches are
            # what the findings above leave behind; with an intact chain it is the only witness.
            problems.extend(self._verify_relation(rows))
        return problems

    def _verify_relation(self, rows: list[dict[str, Any]]) -> list[str]:
        """The patient/study relation must say exactly what each record's columns say.

        Rows are matched to records by the record's hash and sequence number.
        """
        stored: dict[str, set[tuple[int, str, str]]] = {}
        with self._reader.connect() as conn:
            for r in conn.execute(select(audit_object)):
                key = str(r.record_hash)
                stored.setdefault(key, set()).add((int(r.seq), str(r.kind), str(r.object_id)))
        problems = []
        for row in rows:
            expected = {(p["seq"], p["kind"], p["object_id"]) for p in _relation(row)}
            if stored.pop(row["hash"], set()) != expected:
                problems.append(
                    f"record {row['seq']} relation altered (its patient/study rows do not match "
                    "the record)"
                )
        for seq in sorted({seq for pairs in stored.values() for seq, _, _ in pairs}):
            problems.append(f"record {seq} relation altered (rows for a record not there)")
        return problems

    def check_content(self) -> list[str]:
        """Content findings: each record's message against A.5.1 and its indexed columns.

        Independent of the chain: a finding here says a record is malformed, not that the
        store was tampered with (a tampered record is reported by `verify` as altered).
        """
        problems: list[str] = []
        for row in self.iter_all():
            seq = row["seq"]
            try:
                found = validate(row["message"])
                if not found:
                    found = _columns_disagree(row)
            except Exception as exc:  # never let one record stop the walk
                found = [f"cannot be checked ({exc.__class__.__name__})"]
            problems.extend(f"record {seq} malformed: {p}" for p in found)
        return problems

    def dispose(self) -> None:
        self._writer.dispose()
        if self._reader is not self._writer:
            self._reader.dispose()


def _present(conn: Connection, row: dict[str, Any]) -> bool:
    c = audit_record.c
    found = conn.execute(
        select(c.message).where(
            c.request_id == row["request_id"],
            c.recorded_at == row["recorded_at"],
            c.event_id == row["event_id"],
        )
    ).all()
    return any(r.message == row["message"] for r in found)


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _related(kind: str, object_id: str) -> Any:
    return select(audit_object.c.seq).where(
        audit_object.c.kind == kind, audit_object.c.object_id == xml_safe(object_id)
    )


def _columns_disagree(row: dict[str, Any]) -> list[str]:
    """The indexed columns must repeat what the message says (EventID, action, outcome)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(row["message"])  # noqa: S314 - validated just before
    event = root.find("EventIdentification")
    code = event.find("EventID") if event is not None else None
    said = (
        code.get("csd-code") if code is not None else None,
        event.get("EventActionCode") if event is not None else None,
        event.get("EventOutcomeIndicator") if event is not None else None,
    )
    columns = (row["event_id"], row["event_action"], str(row["outcome"]))
    if said != columns:
        return [f"columns {columns} disagree with the message {said}"]
    return []


def _migrate(conn: Connection) -> None:
    """Bring a store to SCHEMA_VERSION inside the caller's (locked) transaction."""
    current = conn.execute(select(audit_schema.c.version).where(audit_schema.c.id == 1)).first()
    version = int(current.version) if current is not None else 1
    if version >= SCHEMA_VERSION:
        return
    # PostgreSQL: the head row lock makes one worker migrate (SQLite: BEGIN IMMEDIATE did).
    conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1).with_for_update())
    # Version 1 -> 2: fill the relation from the records already there. Version-1 columns were
    # "|a|b|" strings, so an id that itself contained "|" cannot be recovered exactly there.
    columns = select(
        audit_record.c.seq, audit_record.c.hash, audit_record.c.patients, audit_record.c.studies
    )
    for r in conn.execute(columns).all():
        related = _relation(dict(r._mapping))
        if related:
            conn.execute(insert(audit_object), related)
    if current is None:
        conn.execute(insert(audit_schema).values(id=1, version=SCHEMA_VERSION))
    else:
        conn.execute(
            update(audit_schema).where(audit_schema.c.id == 1).values(version=SCHEMA_VERSION)
        )


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def now_utc() -> datetime:
    return datetime.fromtimestamp(time.time(), tz=UTC)


def drop_append_only_guard(conn: Connection) -> None:
    """For tamper tests and forensic tooling only: what an attacker with file (or database
    owner) access can do."""
    postgres = conn.dialect.name == "postgresql"
    for table in ("audit_record", "audit_object"):
        for verb in ("update", "delete", "truncate") if postgres else ("update", "delete"):
            on = f" ON {table}" if postgres else ""
            conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_{verb}{on}"))
