"""Keeping the study index true to the archive (docs/policy.md, "Study index").

Three feeds, one code path (`Indexer.index_studies`):

- STOW-RS and the DIMSE front door: `Authorizer.on_stored` indexes what was just verified in the
  archive, from the stored instances themselves (no archive read);
- the change feed (`NewStudy`, `StableStudy`, `Deleted`): studies that reached the archive
  another way, every `change_feed_interval_seconds`;
- reconciliation (`Reconciler`): a pass over every study of the archive in bounded batches,
  at start-up and every `reconcile_interval_seconds`, resumable (its position is kept in the
  store), that indexes what is missing or changed and, at the end of a complete pass, removes
  what the archive no longer holds.

A study new to the policy store is labelled here too (ingest rules on one of its instances),
once. Only one worker process maintains the index at a time (a lease in the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..observe import INDEX_ROUNDS
from .db import Claim, PolicyStore
from .feed import DELETED, STUDY_CHANGES, ArchiveSource, ArchiveStudy
from .index import IndexEntry, StudyIndex
from .ingest import IngestRules

log = logging.getLogger(__name__)

MAX_INSTANCES_PER_QUERY = 20_000  # instance maps read per /tools/find (bounded memory)


class Indexer:
    def __init__(
        self,
        source: ArchiveSource,
        store: PolicyStore,
        index: StudyIndex,
        rules: IngestRules,
        batch: int = 100,
        concurrency: int = 8,
    ) -> None:
        self.source, self.store, self.index, self.rules = source, store, index, rules
        self.batch = batch
        self._limit = asyncio.Semaphore(concurrency)

    async def index_studies(
        self, studies: Iterable[ArchiveStudy], force: bool = False, seen_pass: int | None = None
    ) -> int:
        """Index (and, when new to the policy store, label) these studies; returns how many
        rows were written. Unchanged studies (same archive `LastUpdate`) are only marked seen."""
        wanted = {s.archive_id: s for s in studies}
        if not wanted:
            return 0
        known = await self.index.by_archive_ids(wanted)
        changed = [
            s
            for s in wanted.values()
            if force
            or s.archive_id not in known
            or known[s.archive_id] != (s.study_instance_uid, s.last_update)
        ]
        if seen_pass is not None:
            await self.index.mark_seen(set(wanted) - {s.archive_id for s in changed}, seen_pass)
        written = 0
        for start in range(0, len(changed), self.batch):
            written += await self._index_batch(changed[start : start + self.batch], seen_pass)
        return written

    async def _index_batch(self, studies: list[ArchiveStudy], seen_pass: int | None) -> int:
        by_uid = {s.study_instance_uid: s for s in studies}
        facts = await self.store.studies(by_uid)
        # Instance maps only while they stay small; big studies get theirs on the first miss.
        contents = await self.source.contents(studies, MAX_INSTANCES_PER_QUERY)
        # Labels, once, for studies the policy store does not know yet (ingest rules).
        new = [uid for uid, f in facts.items() if not f.known]

        async def attributes_of(uid: str) -> Mapping[str, Any] | None:
            first = contents[uid].first_instance
            if first is None:
                return None
            async with self._limit:
                return await self.source.instance_attributes(first)

        found = await asyncio.gather(*(attributes_of(uid) for uid in new))
        labelled = []
        for attributes in found:
            if attributes is None:
                continue
            uid = str(attributes.get("StudyInstanceUID") or "").strip()
            if uid in by_uid:
                patient = attributes.get("PatientID")
                labelled.append(
                    (
                        uid,
                        str(patient).strip() if patient else None,
                        self.rules.labels_for(attributes),
                    )
                )
        await self.store.record_ingest_many(labelled, "change-feed")
        claims: list[Claim] = []
        entries: list[IndexEntry] = []
        for uid, study in by_uid.items():
            c = contents[uid]
            patient = study.attributes.get("PatientID", "").strip()
            claims.append(Claim("study", uid, uid, patient_id=patient))
            claims += [Claim("series", series, uid) for series in c.series]
            claims += [Claim("instance", sop, uid, series) for sop, series in c.instances]
            entries.append(
                IndexEntry(
                    uid,
                    study.attributes,
                    frozenset(m for m in c.series.values() if m),
                    len(c.series),
                    c.num_instances,
                    study.archive_id,
                    study.last_update,
                )
            )
        await self.index.record_locations(claims)
        await self.index.upsert(entries, seen_pass)
        return len(entries)

    async def refresh_ids(self, archive_ids: Iterable[str]) -> int:
        """Re-read these studies (by the archive's id) and index what changed."""
        ids = list(dict.fromkeys(archive_ids))

        async def read(archive_id: str) -> ArchiveStudy | None:
            async with self._limit:
                return await self.source.study_by_id(archive_id)

        found = await asyncio.gather(*(read(i) for i in ids))
        return await self.index_studies([s for s in found if s is not None])

    async def refresh_uids(self, uids: Iterable[str]) -> None:
        """Re-read studies by UID: index what the archive holds, drop what it does not."""
        gone: list[str] = []
        present: list[ArchiveStudy] = []
        for uid in dict.fromkeys(uids):
            study = await self.source.study_by_uid(uid)
            if study is None:
                gone.append(uid)
            else:
                present.append(study)
        if present:
            await self.index_studies(present, force=True)
        if gone:
            await self.index.remove(gone)

    async def remove_ids(self, archive_ids: Iterable[str]) -> int:
        known = await self.index.by_archive_ids(archive_ids)
        return await self.index.remove(uid for uid, _ in known.values())


class Reconciler:
    """A resumable pass over every study of the archive, `batch` at a time."""

    OFFSET, PASS, STARTED = "reconcile-offset", "reconcile-pass", "reconcile-started"

    def __init__(self, indexer: Indexer, batch: int = 500) -> None:
        self.indexer = indexer
        self.batch = batch

    async def step(self, force: bool = False) -> tuple[int, bool]:
        """One batch: (studies seen, whether this completed a pass)."""
        store, index = self.indexer.store, self.indexer.index
        offset = await store.cursor(self.OFFSET)
        current = await store.cursor(self.PASS) or 1
        started = await store.cursor(self.STARTED)
        if offset == 0 or not started:
            started = int(time.time()) - 1
            await store.put_cursor(self.STARTED, started)
        page = await self.indexer.source.studies_page(offset, self.batch)
        await self.indexer.index_studies(page, force=force, seen_pass=current)
        if len(page) < self.batch:
            removed = await index.remove_unseen(current, datetime.fromtimestamp(started, UTC))
            if removed:
                log.info("study index: %d studies gone from the archive removed", removed)
            await store.put_cursor(self.PASS, current + 1)
            await store.put_cursor(self.OFFSET, 0)
            await store.put_cursor(self.STARTED, 0)
            return len(page), True
        await store.put_cursor(self.OFFSET, offset + len(page))
        return len(page), False

    async def run_pass(
        self, force: bool = False, progress: Callable[[int, int | None], None] | None = None
    ) -> int:
        """Finish the current pass (from where it stopped); returns studies seen."""
        total = await self.indexer.source.count_studies()
        seen = await self.indexer.store.cursor(self.OFFSET)
        while True:
            count, done = await self.step(force)
            seen += count
            if progress is not None:
                progress(seen, total)
            if done:
                return seen


class ChangeFeedPoller:
    """Maintains the index: the archive's change feed every `interval` seconds, and the
    reconciliation pass at start-up and every `reconcile_interval` seconds (a bounded slice of
    it per round, so the feed stays prompt). Only the worker holding the lease does this."""

    LEASE = "lease:index"
    RECONCILE_SLICE_SECONDS = 2.0

    def __init__(
        self,
        source: ArchiveSource,
        store: PolicyStore,
        rules: IngestRules,
        interval: float,
        name: str = "archive",
        batch: int = 500,
        reconcile_interval: float | None = 600.0,
        index: StudyIndex | None = None,
    ) -> None:
        self.source, self.store, self.rules = source, store, rules
        self.interval, self.name, self.batch = interval, name, batch
        self.indexer = Indexer(source, store, index or StudyIndex(store), rules)
        self.reconciler = Reconciler(self.indexer)
        self.reconcile_interval = reconcile_interval
        self._next_pass = 0.0  # a pass at start-up (or the rest of an interrupted one)
        self._lease_until: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> int:
        """Process every change up to now; returns how many studies were (re)indexed."""
        since = await self.store.cursor(self.name)
        indexed = 0
        while True:
            changes, last, done = await self.source.changes(since, self.batch)
            studies = [c for c in changes if c.resource_type == "Study"]
            refresh = [c.resource_id for c in studies if c.change_type in STUDY_CHANGES]
            deleted = [c.resource_id for c in studies if c.change_type == DELETED]
            if refresh:
                indexed += await self.indexer.refresh_ids(refresh)
            if deleted:
                await self.indexer.remove_ids(deleted)
            # Only advance once the batch is stored: a crash re-reads it (idempotent).
            if last > since:
                await self.store.set_cursor(self.name, last)
            if done or last <= since:
                return indexed
            since = last

    async def reconcile_slice(self, seconds: float) -> bool:
        """Run the reconciliation pass for about `seconds`; True when a pass completed."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            _, done = await self.reconciler.step()
            if done:
                return True
        return False

    async def _hold_lease(self) -> bool:
        now = int(time.time())
        until = now + max(30, int(self.interval * 10))
        if await self.store.lease(self.LEASE, self._lease_until, until, now):
            self._lease_until = until
            return True
        self._lease_until = None
        return False

    async def run(self) -> None:
        while True:
            try:
                if await self._hold_lease():
                    INDEX_ROUNDS.inc()
                    await self.poll_once()
                    due = (
                        self.reconcile_interval is not None and time.monotonic() >= self._next_pass
                    )
                    if due and await self.reconcile_slice(self.RECONCILE_SLICE_SECONDS):
                        assert self.reconcile_interval is not None
                        self._next_pass = time.monotonic() + self.reconcile_interval
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("study index: update failed; retrying in %s s", self.interval)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"change-feed-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
