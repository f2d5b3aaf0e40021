"""Labelling studies as they arrive: after a STOW (`on_stored`) and from the archive's change
feed, so studies that arrive by DIMSE are labelled before anyone can see them (until then the
policy store does not know them and they are visible to nobody).

`ArchiveSource` is the small interface this needs from the archive; `OrthancSource` implements
it over Orthanc's REST API (`/changes`, `/tools/lookup`, `/instances/{id}/simplified-tags`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .db import LabelUpdate, PolicyStore
from .ingest import IngestRules

log = logging.getLogger(__name__)

# Orthanc change types that mean "a study exists or changed" (Orthanc Book, /changes).
STUDY_CHANGES = frozenset({"NewStudy", "StableStudy"})


@dataclass(frozen=True)
class Change:
    seq: int
    change_type: str
    resource_type: str
    resource_id: str  # the archive's own id of the resource


class ArchiveSource(Protocol):
    async def study_attributes(self, study_instance_uid: str) -> Mapping[str, Any] | None:
        """Attributes (PS3.6 keywords) of one instance of the study; None if not stored."""
        ...

    async def study_attributes_by_id(self, resource_id: str) -> Mapping[str, Any] | None: ...

    async def changes(self, since: int, limit: int) -> tuple[list[Change], int, bool]:
        """(changes after `since`, the last sequence number, whether the feed is exhausted)."""
        ...


class JsonArchive(Protocol):
    """The part of the gateway's archive adapter (`archive.orthanc.OrthancArchive`) used here."""

    async def json(self, method: str, path: str, query: str = "", content: Any = None) -> Any: ...


class OrthancSource:
    """`ArchiveSource` over Orthanc's REST API, through the gateway's own archive adapter (its
    credentials, client certificate and timeouts). Only Orthanc ids appear in these requests."""

    def __init__(self, archive: JsonArchive) -> None:
        self._archive = archive

    async def study_attributes(self, study_instance_uid: str) -> Mapping[str, Any] | None:
        found = await self._archive.json(
            "POST", "/tools/lookup", content=study_instance_uid.encode("ascii")
        )
        for hit in found or []:
            if hit.get("Type") == "Study":
                return await self.study_attributes_by_id(str(hit["ID"]))
        return None

    async def study_attributes_by_id(self, resource_id: str) -> Mapping[str, Any] | None:
        # The study's first instance stands for the study: ingest rules match study-level
        # attributes (institution, patient, accession, trial) that all its instances share.
        instances = await self._archive.json("GET", f"/studies/{resource_id}/instances")
        if not instances:
            return None
        tags = await self._archive.json("GET", f"/instances/{instances[0]['ID']}/simplified-tags")
        return tags if isinstance(tags, dict) else None

    async def changes(self, since: int, limit: int) -> tuple[list[Change], int, bool]:
        body = await self._archive.json("GET", "/changes", f"since={since}&limit={limit}") or {}
        changes = [
            Change(int(c["Seq"]), str(c["ChangeType"]), str(c["ResourceType"]), str(c["ID"]))
            for c in body.get("Changes", [])
        ]
        return changes, int(body.get("Last", since)), bool(body.get("Done", True))


async def ingest(
    store: PolicyStore, rules: IngestRules, attributes: Mapping[str, Any], via: str
) -> LabelUpdate | None:
    """Record one study and the labels the ingest rules give it."""
    uid = attributes.get("StudyInstanceUID")
    if not isinstance(uid, str) or not uid.strip():
        return None
    patient_id = attributes.get("PatientID")
    return await store.record_ingest(
        uid.strip(),
        str(patient_id).strip() if patient_id else None,
        rules.labels_for(attributes),
        via,
    )


class ChangeFeedPoller:
    """Reads the archive's change feed every `interval` seconds and labels new studies."""

    def __init__(
        self,
        source: ArchiveSource,
        store: PolicyStore,
        rules: IngestRules,
        interval: float,
        name: str = "archive",
        batch: int = 100,
    ) -> None:
        self.source, self.store, self.rules = source, store, rules
        self.interval, self.name, self.batch = interval, name, batch
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> int:
        """Process every change up to now; returns how many studies were (re)labelled."""
        since = await self.store.cursor(self.name)
        labelled = 0
        while True:
            changes, last, done = await self.source.changes(since, self.batch)
            for change in changes:
                if change.resource_type == "Study" and change.change_type in STUDY_CHANGES:
                    attributes = await self.source.study_attributes_by_id(change.resource_id)
                    if attributes is not None:
                        await ingest(self.store, self.rules, attributes, "change-feed")
                        labelled += 1
            # Only advance once the batch is stored: a crash re-reads it (ingest is idempotent).
            if last > since:
                await self.store.set_cursor(self.name, last)
            if done or last <= since:
                return labelled
            since = last

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("change feed: poll failed; retrying in %s s", self.interval)
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
