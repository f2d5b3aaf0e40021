"""The policy store: study facts, label changes, break-glass grants, the change-feed cursor.

SQLite by default (`sqlite:///path`), PostgreSQL by URL (`postgresql://...`, psycopg 3; pool
and timeouts in `engines.py`). The schema is created and upgraded by the Alembic migrations in
`migrations/`, the same files on both databases, run once at start-up (`migrate()`, serialized
across gateway processes), never by `create_all`.

Several gateway replicas share one PostgreSQL database: every write is one transaction, UID
claims and leases are decided by the database (unique keys, conditional updates), and
`change_marker()` tells each process's caches when any replica changed the policy facts.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from ..policy import StudyFacts
from .engines import (
    DEFAULT_POOL,
    SQLITE_TIMEOUT_SECONDS,
    PoolOptions,
    async_url,
    postgres_options,
    sync_url,
)
from .models import (
    BreakGlassGrant,
    DeviceRecord,
    FeedCursor,
    LabelChange,
    Study,
    StudyLabel,
    UidClaim,
)

_MIGRATIONS = Path(__file__).parent / "migrations"
_SQLITE_TIMEOUT_SECONDS = SQLITE_TIMEOUT_SECONDS
# pg_advisory_xact_lock key of schema changes (migrations), shared by every store's set-up.
SCHEMA_LOCK = 0x5A7_0001


def _driver_urls(database_url: str) -> tuple[URL, URL]:
    """(sync URL for migrations, async URL for requests) for one configured URL: pysqlite and
    aiosqlite for SQLite, psycopg 3 (sync, then async) for PostgreSQL."""
    make_url(database_url)  # a malformed URL fails here, with SQLAlchemy's message
    return sync_url(database_url), async_url(database_url)


@dataclass(frozen=True)
class LabelUpdate:
    study_instance_uid: str
    before: frozenset[str]
    after: frozenset[str]

    @property
    def added(self) -> frozenset[str]:
        return self.after - self.before

    @property
    def removed(self) -> frozenset[str]:
        return self.before - self.after


class UnknownStudy(LookupError):
    pass


@dataclass(frozen=True)
class Claim:
    """One UID and where it belongs: (level, uid) -> study, series, patient (AP-7)."""

    level: str  # study | series | instance
    uid: str
    study_instance_uid: str
    series_instance_uid: str | None = None
    patient_id: str | None = None

    def agrees(self, other: Claim) -> bool:
        if self.study_instance_uid != other.study_instance_uid:
            return False
        if self.level == "instance" and self.series_instance_uid != other.series_instance_uid:
            return False
        return not (self.level == "study" and (self.patient_id or "") != (other.patient_id or ""))


class PolicyStore:
    def __init__(self, database_url: str, pool: PoolOptions = DEFAULT_POOL) -> None:
        self._sync_url, requests_url = _driver_urls(database_url)
        self._pool = pool
        self.postgres = requests_url.get_backend_name() == "postgresql"
        if self.postgres:
            self.engine: AsyncEngine = create_async_engine(requests_url, **postgres_options(pool))
        else:
            self.engine = create_async_engine(
                requests_url, connect_args={"timeout": _SQLITE_TIMEOUT_SECONDS}
            )
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._session = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite: one plain connection that only reads the store_version row (change_marker).
        self._marker_db: sqlite3.Connection | None = None
        self._marker_path = (
            self._sync_url.database if self._sync_url.get_backend_name() == "sqlite" else None
        )

    # -- schema ------------------------------------------------------------------------------

    def migrate(self, attempts: int = 5) -> None:
        """Upgrade the schema to the newest migration (safe when several workers start)."""
        connect_args: dict[str, Any] = {}
        if self._sync_url.get_backend_name() == "sqlite":
            connect_args["timeout"] = _SQLITE_TIMEOUT_SECONDS
            if self._sync_url.database:
                Path(self._sync_url.database).parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {"connect_args": connect_args}
        if self.postgres:
            options = postgres_options(self._pool) | {"pool_size": 1, "max_overflow": 0}
        engine = create_engine(self._sync_url, **options)
        try:
            for attempt in range(attempts):
                try:
                    with engine.begin() as connection:
                        if self.postgres:
                            # One process migrates at a time (PostgreSQL DDL is transactional:
                            # the next one then finds the schema at head and does nothing).
                            connection.execute(
                                text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK}
                            )
                        config = Config()
                        config.set_main_option("script_location", str(_MIGRATIONS))
                        config.attributes["connection"] = connection
                        command.upgrade(config, "head")
                    return
                except (OperationalError, IntegrityError):
                    # Another worker is migrating the same database; retry after it finished.
                    if attempt == attempts - 1:
                        raise
                    time.sleep(0.5 * (attempt + 1))
        finally:
            engine.dispose()

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def close(self) -> None:
        if self._marker_db is not None:
            self._marker_db.close()
            self._marker_db = None
        await self.engine.dispose()

    async def change_marker(self) -> int | None:
        """A number that changes whenever any connection, in any worker process or gateway
        replica, commits a change to the policy facts or grants; None when there is no cheap
        one (nothing is cached then).

        Both databases: the `store_version` row, bumped in the same transaction as every write
        to `study`, `study_label` and `break_glass_grant` by a trigger (migrations 0005 and
        0008): one primary-key read replaces the facts and grants queries, and writes to other
        tables (UID claims, the study index, the change feed's lease) leave caches warm. On
        SQLite it is read on one plain connection on the event loop: in WAL mode a read of one
        cached page, microseconds and no disk I/O.
        A marker read after a commit is visible sees that commit's number, so a cache filled
        under a marker never holds an older state than the marker says.
        """
        if self.postgres:
            async with self.engine.connect() as connection:
                value = await connection.scalar(
                    text("SELECT version FROM store_version WHERE id = 1")
                )
            return None if value is None else int(value)
        return self._sqlite_marker()

    def _sqlite_marker(self) -> int | None:
        if not self._marker_path or self._marker_path == ":memory:":
            return None
        try:
            if self._marker_db is None:
                self._marker_db = sqlite3.connect(
                    self._marker_path, isolation_level=None, check_same_thread=False
                )
            # fetchall: the statement runs to its end, so no read transaction stays open.
            rows = self._marker_db.execute(
                "SELECT version FROM store_version WHERE id = 1"
            ).fetchall()
            return int(rows[0][0]) if rows else None
        except sqlite3.Error:
            if self._marker_db is not None:
                self._marker_db.close()
            self._marker_db = None
            return None

    # -- reads -------------------------------------------------------------------------------

    async def studies(self, uids: Iterable[str]) -> dict[str, StudyFacts]:
        """Facts for each UID; a UID the store does not know gets `known=False`."""
        wanted = sorted(set(uids))
        found: dict[str, StudyFacts] = {}
        patients: dict[str, str | None] = {}
        labels: dict[str, set[str]] = {}
        # One plain join per chunk on a plain connection (no ORM session or objects): this
        # read sits on every decision that misses the cache.
        async with self.engine.connect() as conn:
            for chunk in _chunks(wanted, 500):
                for uid, patient, label in await conn.execute(
                    select(Study.study_instance_uid, Study.patient_id, StudyLabel.label)
                    .outerjoin(
                        StudyLabel, StudyLabel.study_instance_uid == Study.study_instance_uid
                    )
                    .where(Study.study_instance_uid.in_(chunk))
                ):
                    patients[uid] = patient
                    if label is not None:
                        labels.setdefault(uid, set()).add(label)
        for uid, patient in patients.items():
            found[uid] = StudyFacts(uid, patient, frozenset(labels.get(uid, ())))
        return {uid: found.get(uid, StudyFacts(uid, known=False)) for uid in wanted}

    async def study(self, uid: str) -> StudyFacts:
        return (await self.studies([uid]))[uid]

    async def active_grants(self, subject: str, issuer: str, now: datetime) -> frozenset[str]:
        async with self._session() as session:
            rows = await session.scalars(
                select(BreakGlassGrant.study_instance_uid).where(
                    BreakGlassGrant.subject == subject,
                    BreakGlassGrant.issuer == issuer,
                    BreakGlassGrant.expires_at > now,
                )
            )
            return frozenset(rows)

    async def grant_expiries(self, subject: str, issuer: str, now: datetime) -> dict[str, datetime]:
        """Active break-glass grants of one user: study -> when the latest grant expires."""
        async with self._session() as session:
            rows = await session.execute(
                select(BreakGlassGrant.study_instance_uid, BreakGlassGrant.expires_at).where(
                    BreakGlassGrant.subject == subject,
                    BreakGlassGrant.issuer == issuer,
                    BreakGlassGrant.expires_at > now,
                )
            )
            out: dict[str, datetime] = {}
            for uid, expires in rows:
                if uid not in out or expires > out[uid]:
                    out[uid] = expires
            return out

    async def label_history(self, uid: str) -> list[LabelChange]:
        async with self._session() as session:
            rows = await session.scalars(
                select(LabelChange)
                .where(LabelChange.study_instance_uid == uid)
                .order_by(LabelChange.id)
            )
            return list(rows)

    # -- writes ------------------------------------------------------------------------------

    async def record_ingest(
        self, uid: str, patient_id: str | None, labels: Iterable[str], via: str
    ) -> LabelUpdate:
        """Create the study with the ingest labels if it is new; never change a known study.

        Ingest rules label a study once, when it first appears (AP-7): a later instance, whatever
        it carries, cannot add a label to (or move) a study; only the admin API changes labels.
        """
        labels = frozenset(labels)
        now = datetime.now(UTC)
        for attempt in range(3):
            try:
                async with self._session.begin() as session:
                    study = await session.get(Study, uid)
                    if study is not None:
                        before = frozenset(lbl.label for lbl in study.labels)
                        return LabelUpdate(uid, before, before)
                    study = Study(
                        study_instance_uid=uid,
                        patient_id=patient_id,
                        source=via,
                        created_at=now,
                        labels=[StudyLabel(label=label) for label in sorted(labels)],
                    )
                    session.add(study)
                    update = LabelUpdate(uid, frozenset(), labels)
                    if update.added:
                        session.add(_history(update, via, via, "ingest rules", now))
                return update
            except IntegrityError:
                # Two workers ingested the same study at once: the other one won; merge again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def record_ingest_many(
        self, studies: Iterable[tuple[str, str | None, Iterable[str]]], via: str
    ) -> None:
        """`record_ingest` for many studies in one transaction (the index's batches); a study
        the store already knows is left as it is. Falls back to one at a time on a race."""
        wanted = {uid: (patient, frozenset(labels)) for uid, patient, labels in studies}
        if not wanted:
            return
        now = datetime.now(UTC)
        try:
            async with self._session.begin() as session:
                known = set()
                for chunk in _chunks(sorted(wanted), 500):
                    known |= set(
                        await session.scalars(
                            select(Study.study_instance_uid).where(
                                Study.study_instance_uid.in_(chunk)
                            )
                        )
                    )
                for uid in sorted(set(wanted) - known):
                    patient, labels = wanted[uid]
                    session.add(
                        Study(
                            study_instance_uid=uid,
                            patient_id=patient,
                            source=via,
                            created_at=now,
                            labels=[StudyLabel(label=label) for label in sorted(labels)],
                        )
                    )
                    update = LabelUpdate(uid, frozenset(), labels)
                    if update.added:
                        session.add(_history(update, via, via, "ingest rules", now))
        except IntegrityError:
            for uid, (patient, labels) in wanted.items():
                await self.record_ingest(uid, patient, labels, via)

    async def change_labels(
        self, uid: str, add: Iterable[str], remove: Iterable[str], changed_by: str, reason: str
    ) -> LabelUpdate:
        now = datetime.now(UTC)
        async with self._session.begin() as session:
            study = await session.get(Study, uid)
            if study is None:
                raise UnknownStudy(uid)
            before = frozenset(lbl.label for lbl in study.labels)
            after = (before | frozenset(add)) - frozenset(remove)
            study.labels = [lbl for lbl in study.labels if lbl.label in after]
            for label in sorted(after - before):
                study.labels.append(StudyLabel(label=label))
            update = LabelUpdate(uid, before, after)
            session.add(_history(update, changed_by, "admin", reason, now))
            return update

    async def grant_break_glass(
        self,
        subject: str,
        issuer: str,
        uid: str,
        reason: str,
        duration_seconds: int,
        now: datetime | None = None,
    ) -> BreakGlassGrant:
        now = now or datetime.now(UTC)
        grant = BreakGlassGrant(
            subject=subject,
            issuer=issuer,
            study_instance_uid=uid,
            reason=reason,
            granted_at=now,
            expires_at=now + timedelta(seconds=duration_seconds),
        )
        async with self._session.begin() as session:
            # Expired grants are kept out of decisions by their expiry; prune them here.
            await session.execute(
                delete(BreakGlassGrant).where(BreakGlassGrant.expires_at < now - timedelta(days=30))
            )
            session.add(grant)
        return grant

    async def claim(self, claims: Iterable[Claim]) -> tuple[list[Claim], list[Claim]]:
        """Check and record where UIDs belong, atomically: (conflicting claims, new claims).

        A UID already claimed under another study (or a study under another patient) is a
        conflict and nothing of this call is recorded; otherwise every unknown UID is recorded
        in the same transaction, so two concurrent stores of one UID into two studies cannot
        both pass. `new` lists what this call added (to be released if the store fails).
        """
        wanted = {(c.level, c.uid): c for c in claims}
        for attempt in range(3):
            try:
                # A plain connection, not an ORM session: this transaction is on every store.
                async with self.engine.begin() as conn:
                    existing = await existing_claims(conn, wanted)
                    conflicts = [
                        c for k, c in wanted.items() if k in existing and not c.agrees(existing[k])
                    ]
                    if conflicts:
                        return conflicts, []
                    new = [c for k, c in wanted.items() if k not in existing]
                    if new:
                        await conn.execute(
                            insert(UidClaim),
                            [
                                {
                                    "level": c.level,
                                    "uid": c.uid,
                                    "study_instance_uid": c.study_instance_uid,
                                    "series_instance_uid": c.series_instance_uid,
                                    "patient_id": c.patient_id,
                                }
                                for c in new
                            ],
                        )
                return [], new
            except IntegrityError:
                # Another worker claimed one of these UIDs at the same moment: check again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def recorded(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Claim]:
        """The recorded claims of these (level, UID) keys (one read, no transaction)."""
        async with self.engine.connect() as conn:
            return await existing_claims(conn, keys)

    async def release(self, claims: Iterable[Claim]) -> None:
        """Forget claims this gateway recorded for instances the archive did not keep."""
        claims = list(claims)
        if not claims:
            return
        async with self._session.begin() as session:
            for c in claims:
                await session.execute(
                    delete(UidClaim).where(
                        UidClaim.level == c.level,
                        UidClaim.uid == c.uid,
                        UidClaim.study_instance_uid == c.study_instance_uid,
                    )
                )

    async def claims_of_study(self, study_instance_uid: str) -> list[Claim]:
        async with self._session() as session:
            rows = await session.scalars(
                select(UidClaim).where(UidClaim.study_instance_uid == study_instance_uid)
            )
            return [_claim_of(row) for row in rows]

    async def cursor(self, name: str) -> int:
        async with self._session() as session:
            row = await session.get(FeedCursor, name)
            return row.last_seq if row else 0

    async def put_cursor(self, name: str, value: int) -> None:
        """Set a named position exactly (the reconciliation pass keeps its state here)."""
        async with self._session.begin() as session:
            row = await session.get(FeedCursor, name)
            if row is None:
                session.add(FeedCursor(name=name, last_seq=value))
            else:
                row.last_seq = value

    async def lease(self, name: str, previous: int | None, until: int, now: int) -> bool:
        """Take or renew a lease (one worker maintains the index): the row holds its expiry.

        Renewing compares with the expiry this holder wrote (`previous`); taking needs an
        expired one. One conditional UPDATE, so two workers cannot both win.
        """
        try:
            async with self._session.begin() as session:
                condition = FeedCursor.last_seq < now
                if previous is not None:
                    condition = or_(condition, FeedCursor.last_seq == previous)
                result = await session.execute(
                    update(FeedCursor)
                    .where(FeedCursor.name == name, condition)
                    .values(last_seq=until)
                )
                if int(getattr(result, "rowcount", 0) or 0) == 1:
                    return True
                if await session.get(FeedCursor, name) is None:
                    session.add(FeedCursor(name=name, last_seq=until))
                    return True
                return False
        except IntegrityError:
            return False

    async def set_cursor(self, name: str, last_seq: int) -> None:
        async with self._session.begin() as session:
            row = await session.get(FeedCursor, name)
            if row is None:
                session.add(FeedCursor(name=name, last_seq=last_seq))
            elif last_seq > row.last_seq:
                row.last_seq = last_seq

    # -- device inventory (DV-3) ---------------------------------------------------------------

    _REGISTRATION = (
        "kind",
        "ae_title",
        "host",
        "client_id",
        "scopes",
        "permissions",
        "tls",
        "certificate_sha256",
        "certificate_not_after",
    )

    async def sync_devices(
        self, entries: list[dict[str, Any]], kinds: Iterable[str], now: datetime
    ) -> None:
        """Upsert the registered peers (keys of `_REGISTRATION` plus `name`); a known peer of
        one of `kinds` missing from `entries` stays listed, as no longer registered."""
        kinds = set(kinds)
        async with self._session.begin() as session:
            known = {r.name: r for r in await session.scalars(select(DeviceRecord))}
            names = set()
            for entry in entries:
                names.add(entry["name"])
                row = known.get(entry["name"])
                if row is None:
                    row = DeviceRecord(name=entry["name"])
                    session.add(row)
                for key in self._REGISTRATION:
                    setattr(row, key, entry.get(key))
                row.registered, row.updated_at = True, now
            for name, row in known.items():
                if name not in names and row.kind in kinds and row.registered:
                    row.registered, row.updated_at = False, now

    async def device_seen(
        self, name: str, what: str, address: str, tls: str | None, now: datetime
    ) -> None:
        """The door saw `name` (what: association | echo | store) succeed."""
        async with self._session.begin() as session:
            row = await session.get(DeviceRecord, name)
            if row is None:
                return
            row.last_seen_at, row.last_address = now, address[:64]
            if tls:
                row.last_tls = tls[:100]
            if what == "echo":
                row.last_echo_at = now
            elif what == "store":
                row.last_store_at = now

    async def devices(self) -> list[DeviceRecord]:
        async with self._session() as session:
            rows = await session.scalars(
                select(DeviceRecord).order_by(DeviceRecord.kind, DeviceRecord.name)
            )
            return list(rows)


def _history(
    update: LabelUpdate, changed_by: str, via: str, reason: str, now: datetime
) -> LabelChange:
    return LabelChange(
        study_instance_uid=update.study_instance_uid,
        changed_at=now,
        changed_by=changed_by,
        via=via,
        added=" ".join(sorted(update.added)),
        removed=" ".join(sorted(update.removed)),
        reason=reason,
    )


# One statement of fixed shape for every store (SQLAlchemy compiles it once): each level's
# UIDs are a primary-key look-up, an empty level matches nothing.
_CLAIMS_OF = select(
    UidClaim.level,
    UidClaim.uid,
    UidClaim.study_instance_uid,
    UidClaim.series_instance_uid,
    UidClaim.patient_id,
).where(
    or_(
        *(
            and_(UidClaim.level == level, UidClaim.uid.in_(bindparam(level, expanding=True)))
            for level in ("study", "series", "instance")
        )
    )
)


async def existing_claims(
    session: AsyncSession | AsyncConnection, wanted: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Claim]:
    """The recorded claims of these (level, UID) keys, in chunks the databases accept."""
    existing: dict[tuple[str, str], Claim] = {}
    # One query per 500 keys for all levels at once, plain rows rather than ORM objects:
    # this read is on every store.
    keys = sorted(set(wanted))
    for start in range(0, len(keys), 500):
        by_level: dict[str, list[str]] = {"study": [], "series": [], "instance": []}
        for level, uid in keys[start : start + 500]:
            by_level[level].append(uid)
        rows = await session.execute(_CLAIMS_OF, by_level)
        for level, uid, study, series, patient in rows:
            existing[(level, uid)] = Claim(level, uid, study, series, patient)
    return existing


def _claim_of(row: UidClaim) -> Claim:
    return Claim(
        row.level, row.uid, row.study_instance_uid, row.series_instance_uid, row.patient_id
    )


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # As the audit store: a commit survives a crash of the process; one lost to a power cut
    # at most loses the newest claims and labels, which the change feed re-derives from the
    # archive. FULL would add a sync per STOW on the request's path.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
