"""The study index (docs/policy.md, "Study index"): reads and writes of `study_index`,
`study_index_modality` and the series/instance -> study map (`uid_claim`).

Every search query joins `study_index` with `study` (the policy facts): a study the policy
store does not know is never a candidate (fail closed). The order of every answer is fixed:
newest StudyDate first, then StudyTime, then StudyInstanceUID (all descending), so pages are
stable and no study is skipped or repeated while paging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from ..policy import StudyFacts
from .db import Claim, PolicyStore, _chunks, _claim_of, existing_claims
from .matching import fold, study_conditions
from .models import Study, StudyIndexEntry, StudyIndexModality, StudyLabel, UidClaim
from .predicate import Predicate, as_clause

log = logging.getLogger(__name__)

E = StudyIndexEntry
ORDER = (E.study_date.desc(), E.study_time.desc(), E.study_instance_uid.desc())
# A label is "rare" (read from its index, store/predicate.py) on at most this share of the
# studies or this many, whichever is more; recounted at most this often.
RARE_SHARE = 0.15
RARE_COUNT = 5_000
RARE_TTL_SECONDS = 60.0


def _clip(value: object, size: int) -> str:
    text = "" if value is None else str(value).strip()
    return text[:size]


@dataclass(frozen=True)
class IndexEntry:
    """What the index holds about one study (keywords as in PS3.6)."""

    study_instance_uid: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    modalities: frozenset[str] = frozenset()
    num_series: int = 0
    num_instances: int = 0
    archive_id: str | None = None
    last_update: str = ""

    def columns(self) -> dict[str, Any]:
        a = self.attributes
        return {
            "archive_id": self.archive_id,
            "study_date": _clip(a.get("StudyDate"), 8),
            "study_time": _clip(a.get("StudyTime"), 16),
            "accession_number": _clip(a.get("AccessionNumber"), 64),
            "patient_id": _clip(a.get("PatientID"), 64),
            "patient_name": _clip(a.get("PatientName"), 324),
            "patient_name_key": fold(_clip(a.get("PatientName"), 324)),
            "referring_physician_key": fold(_clip(a.get("ReferringPhysicianName"), 324)),
            "study_id": _clip(a.get("StudyID"), 16),
            "study_description_key": fold(_clip(a.get("StudyDescription"), 64)),
            "num_series": self.num_series,
            "num_instances": self.num_instances,
            "last_update": _clip(self.last_update, 32),
        }


@dataclass(frozen=True)
class IndexedStudy:
    """One candidate row: the study and its policy facts."""

    study_instance_uid: str
    facts: StudyFacts
    order_key: tuple[str, str, str]


class StudyIndex:
    """The index, in the policy store's database (same engine, same migrations)."""

    def __init__(self, store: PolicyStore) -> None:
        self.store = store
        self.dialect = store.engine.dialect.name
        self._rare: frozenset[str] = frozenset()
        self._rare_until = 0.0

    # -- searches --------------------------------------------------------------------------

    def _candidates(
        self, matches: tuple[tuple[str, str], ...], fuzzy: bool, predicate: Predicate
    ) -> tuple[Any, list[tuple[str, str]]]:
        conditions, residual = study_conditions(matches, fuzzy, self.dialect)
        stmt = (
            select(E.study_instance_uid, E.study_date, E.study_time)
            .join(Study, Study.study_instance_uid == E.study_instance_uid)
            .where(as_clause(predicate), *conditions)
        )
        return stmt, residual

    def residual(self, matches: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
        """The matching keys the index does not hold (matched by the archive instead)."""
        return study_conditions(matches, False, self.dialect)[1]

    async def page(
        self,
        predicate: Predicate,
        matches: tuple[tuple[str, str], ...],
        fuzzy: bool,
        limit: int,
        offset: int,
    ) -> list[tuple[str, str]]:
        """One page of permitted, matching studies, in the index order (one SQL query): each
        with its row's version (what changes whenever the index learns the study changed:
        the archive's last update, the counts, the time it was indexed)."""
        if predicate is False or limit <= 0:
            return []
        stmt, _ = self._candidates(matches, fuzzy, predicate)
        stmt = (
            stmt.add_columns(E.last_update, E.num_series, E.num_instances, E.indexed_at)
            .order_by(*ORDER)
            .limit(limit)
            .offset(offset)
        )
        async with self.store._session() as session:
            return [
                (row[0], f"{row[3]}|{row[4]}|{row[5]}|{row[6].isoformat()}")
                for row in await session.execute(stmt)
            ]

    async def count_matching(
        self, predicate: Predicate, matches: tuple[tuple[str, str], ...], fuzzy: bool
    ) -> int:
        """How many permitted studies match (the `Warning: 299` of a capped answer)."""
        if predicate is False:
            return 0
        stmt, _ = self._candidates(matches, fuzzy, predicate)
        counted = select(func.count()).select_from(stmt.subquery())
        async with self.store._session() as session:
            return int((await session.execute(counted)).scalar_one())

    async def scan(
        self,
        predicate: Predicate,
        matches: tuple[tuple[str, str], ...],
        fuzzy: bool,
        batch: int = 500,
    ) -> AsyncIterator[list[IndexedStudy]]:
        """Candidates in the index order, `batch` rows per query (keyset paging, so each query
        costs the same however deep it is), each with its facts for decide()."""
        if predicate is False:
            return
        base, _ = self._candidates(matches, fuzzy, predicate)
        base = base.add_columns(Study.patient_id)
        after: tuple[str, str, str] | None = None
        while True:
            stmt = base
            if after is not None:
                stmt = stmt.where(
                    tuple_(E.study_date, E.study_time, E.study_instance_uid)
                    < tuple_(after[1], after[2], after[0])
                )
            stmt = stmt.order_by(*ORDER).limit(batch)
            async with self.store._session() as session:
                rows = list(await session.execute(stmt))
                uids = [row[0] for row in rows]
                labels: dict[str, set[str]] = {}
                for chunk in _chunks(uids, 500):
                    for uid, label in await session.execute(
                        select(StudyLabel.study_instance_uid, StudyLabel.label).where(
                            StudyLabel.study_instance_uid.in_(chunk)
                        )
                    ):
                        labels.setdefault(uid, set()).add(label)
            if not rows:
                return
            yield [
                IndexedStudy(
                    row[0],
                    StudyFacts(row[0], row[3], frozenset(labels.get(row[0], ()))),
                    (row[0], row[1], row[2]),
                )
                for row in rows
            ]
            if len(rows) < batch:
                return
            last = rows[-1]
            after = (last[0], last[1], last[2])

    # -- label statistics (the predicate's plan) -------------------------------------------

    async def rare_labels(self) -> frozenset[str]:
        """Labels on at most RARE_SHARE of the studies (or RARE_COUNT, whichever is more),
        recounted at most every RARE_TTL_SECONDS: the predicate reads these from their index
        (store/predicate.py). A stale answer only picks the slower plan, never another set."""
        now = time.monotonic()
        if now < self._rare_until:
            return self._rare
        async with self.store._session() as session:
            total = int(
                (await session.execute(select(func.count()).select_from(Study))).scalar_one()
            )
            counts = await session.execute(
                select(StudyLabel.label, func.count()).group_by(StudyLabel.label)
            )
            bound = max(RARE_COUNT, int(total * RARE_SHARE))
            self._rare = frozenset(label for label, n in counts if n <= bound)
        self._rare_until = now + RARE_TTL_SECONDS
        return self._rare

    # -- owners ----------------------------------------------------------------------------

    async def owner(self, level: str, uid: str) -> Claim | None:
        """Where a study/series/instance UID belongs (one indexed look-up), None if unknown."""
        async with self.store._session() as session:
            row = await session.get(UidClaim, (level, uid))
            return _claim_of(row) if row is not None else None

    async def owners(self, level: str, uids: Iterable[str]) -> dict[str, Claim]:
        out: dict[str, Claim] = {}
        async with self.store._session() as session:
            for chunk in _chunks(sorted(set(uids)), 500):
                rows = await session.scalars(
                    select(UidClaim).where(UidClaim.level == level, UidClaim.uid.in_(chunk))
                )
                for row in rows:
                    out[row.uid] = _claim_of(row)
        return out

    async def record_locations(self, claims: Iterable[Claim]) -> list[Claim]:
        """Add what the archive reports about where UIDs live, for UIDs not yet claimed.

        Unlike `PolicyStore.claim` (a store: all or nothing) this keeps every agreeing claim
        and returns the ones that disagree with an existing claim (a UID the archive holds
        under another study than the one it was first known under: logged, never moved).
        """
        wanted = {(c.level, c.uid): c for c in claims}
        for attempt in range(3):
            try:
                conflicts: list[Claim] = []
                async with self.store._session.begin() as session:
                    existing = await existing_claims(session, wanted)
                    for key, c in wanted.items():
                        if key in existing:
                            if not c.agrees(existing[key]):
                                conflicts.append(c)
                            continue
                        session.add(
                            UidClaim(
                                level=c.level,
                                uid=c.uid,
                                study_instance_uid=c.study_instance_uid,
                                series_instance_uid=c.series_instance_uid,
                                patient_id=c.patient_id,
                            )
                        )
                for c in conflicts:
                    log.warning("study index: %s %s is claimed by another study", c.level, c.uid)
                return conflicts
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # -- writes ----------------------------------------------------------------------------

    async def upsert(self, entries: Iterable[IndexEntry], seen_pass: int | None = None) -> None:
        """Insert or replace index rows (and their modalities), in one transaction."""
        batch = {e.study_instance_uid: e for e in entries}
        if not batch:
            return
        now = datetime.now(UTC)
        for attempt in range(3):
            try:
                async with self.store._session.begin() as session:
                    for chunk in _chunks(sorted(batch), 500):
                        rows = {
                            row.study_instance_uid: row
                            for row in await session.scalars(
                                select(E).where(E.study_instance_uid.in_(chunk))
                            )
                        }
                        await session.execute(
                            delete(StudyIndexModality).where(
                                StudyIndexModality.study_instance_uid.in_(chunk)
                            )
                        )
                        for uid in chunk:
                            entry = batch[uid]
                            columns = entry.columns()
                            row = rows.get(uid)
                            if row is None:
                                row = E(study_instance_uid=uid, seen_pass=seen_pass or 0)
                                session.add(row)
                            elif seen_pass is not None:
                                row.seen_pass = seen_pass
                            for name, value in columns.items():
                                setattr(row, name, value)
                            row.indexed_at = now
                        await session.flush()
                        session.add_all(
                            StudyIndexModality(study_instance_uid=uid, modality=m[:16])
                            for uid in chunk
                            for m in sorted(batch[uid].modalities)
                            if m
                        )
                return
            except IntegrityError:
                if attempt == 2:
                    raise

    async def add_stored(
        self, modalities: Mapping[str, Iterable[str]], added: Mapping[str, tuple[int, int]]
    ) -> set[str]:
        """After a store: each indexed study gets the series and instances the store added
        (`added`: the new UID claims, so an instance stored again adds nothing) and any new
        modality, in one transaction and without counting the study's claims again (a store
        appends to a known, possibly large study far more often than it starts one); returns
        the studies not indexed yet, for `upsert`."""
        uids = sorted(modalities)
        table = cast(Table, E.__table__)
        known = cast(Table, StudyIndexModality.__table__)
        present: set[str] = set()
        async with self.store.engine.begin() as conn:
            now = datetime.now(UTC)
            grown = [u for u in uids if any(added.get(u, (0, 0)))]
            for uid in grown:
                series, instances = added[uid]
                # Added in the database (no read-modify-write: concurrent stores into one
                # study from several workers all count); RETURNING says whether it is indexed.
                present.update(
                    await conn.scalars(
                        update(table)
                        .where(table.c.study_instance_uid == uid)
                        .values(
                            num_series=table.c.num_series + series,
                            num_instances=table.c.num_instances + instances,
                            indexed_at=now,
                        )
                        .returning(table.c.study_instance_uid)
                    )
                )
            rest = [u for u in uids if u not in grown]
            if rest:
                present.update(
                    await conn.scalars(
                        select(table.c.study_instance_uid).where(
                            table.c.study_instance_uid.in_(rest)
                        )
                    )
                )
            # A modality can only be new with new instances: a store that added nothing to a
            # study (the same instances again) writes nothing.
            rows = [
                {"study_instance_uid": uid, "modality": m}
                for uid in grown
                if uid in present
                for m in sorted({m[:16] for m in modalities[uid] if m})
            ]
            if rows:
                insert_ = postgresql_insert if self.dialect == "postgresql" else sqlite_insert
                await conn.execute(insert_(known).on_conflict_do_nothing(), rows)
        return set(uids) - present

    async def remove(self, uids: Iterable[str]) -> int:
        wanted = sorted(set(uids))
        removed = 0
        async with self.store._session.begin() as session:
            for chunk in _chunks(wanted, 500):
                await session.execute(
                    delete(StudyIndexModality).where(
                        StudyIndexModality.study_instance_uid.in_(chunk)
                    )
                )
                result = await session.execute(delete(E).where(E.study_instance_uid.in_(chunk)))
                removed += int(getattr(result, "rowcount", 0) or 0)
        return removed

    async def by_archive_ids(self, archive_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """archive id -> (StudyInstanceUID, last_update) for indexed studies."""
        out: dict[str, tuple[str, str]] = {}
        async with self.store._session() as session:
            for chunk in _chunks(sorted(set(archive_ids)), 500):
                for uid, archive_id, last in await session.execute(
                    select(E.study_instance_uid, E.archive_id, E.last_update).where(
                        E.archive_id.in_(chunk)
                    )
                ):
                    if archive_id:
                        out[archive_id] = (uid, last)
        return out

    async def mark_seen(self, archive_ids: Iterable[str], seen_pass: int) -> None:
        async with self.store._session.begin() as session:
            for chunk in _chunks(sorted(set(archive_ids)), 500):
                await session.execute(
                    update(E).where(E.archive_id.in_(chunk)).values(seen_pass=seen_pass)
                )

    async def remove_unseen(self, seen_pass: int, started: datetime) -> int:
        """After a complete reconciliation pass: rows the archive no longer holds."""
        async with self.store._session() as session:
            gone = list(
                await session.scalars(
                    select(E.study_instance_uid).where(
                        E.seen_pass < seen_pass, E.indexed_at < started
                    )
                )
            )
        return await self.remove(gone) if gone else 0

    async def count(self) -> int:
        async with self.store._session() as session:
            return int((await session.execute(select(func.count()).select_from(E))).scalar_one())

    async def study_counts(self, uid: str) -> tuple[int, int]:
        """(series, instances) claimed under a study."""
        async with self.store._session() as session:
            rows = dict(
                list(
                    await session.execute(
                        select(UidClaim.level, func.count())
                        .where(UidClaim.study_instance_uid == uid)
                        .group_by(UidClaim.level)
                    )
                )
            )
        return int(rows.get("series", 0)), int(rows.get("instance", 0))
