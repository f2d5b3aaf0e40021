"""Labelling and indexing studies as they arrive: after a STOW (`on_stored`) and from the
archive's change feed, so studies that reach the archive another way are labelled before anyone
can see them (until then the policy store does not know them and they are visible to nobody)
and indexed for search (store/indexer.py).

`ArchiveSource` is the small interface this needs from the archive; `OrthancSource` implements
it over Orthanc's REST API (`/changes`, `/tools/lookup`, `/tools/find`, `/studies`,
`/instances/{id}/simplified-tags`). Only Orthanc ids and POST bodies carry identifiers: no
StudyInstanceUID appears in a URL of these background requests.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .db import LabelUpdate, PolicyStore
from .ingest import IngestRules

log = logging.getLogger(__name__)

# Orthanc change types that mean "a study exists or changed" (Orthanc Book, /changes).
STUDY_CHANGES = frozenset({"NewStudy", "StableStudy"})
DELETED = "Deleted"


@dataclass(frozen=True)
class Change:
    seq: int
    change_type: str
    resource_type: str
    resource_id: str  # the archive's own id of the resource


@dataclass(frozen=True)
class ArchiveStudy:
    """A study as the archive's own index describes it (no file is read for this)."""

    archive_id: str
    study_instance_uid: str
    attributes: dict[str, str]  # study and patient main tags, by PS3.6 keyword
    last_update: str = ""
    num_series: int = 0


@dataclass
class StudyContents:
    """A study's series (with modality) and instances, from the archive's index."""

    series: dict[str, str] = field(default_factory=dict)  # SeriesInstanceUID -> Modality
    instances: list[tuple[str, str]] = field(default_factory=list)  # (SOP UID, series UID)
    num_instances: int = 0
    first_instance: str | None = None  # the archive's id of one instance


class ArchiveSource(Protocol):
    async def study_attributes(self, study_instance_uid: str) -> Mapping[str, Any] | None:
        """Attributes (PS3.6 keywords) of one instance of the study; None if not stored."""
        ...

    async def study_attributes_by_id(self, resource_id: str) -> Mapping[str, Any] | None: ...

    async def changes(self, since: int, limit: int) -> tuple[list[Change], int, bool]:
        """(changes after `since`, the last sequence number, whether the feed is exhausted)."""
        ...

    async def study_by_id(self, resource_id: str) -> ArchiveStudy | None: ...

    async def study_by_uid(self, study_instance_uid: str) -> ArchiveStudy | None: ...

    async def studies_page(self, since: int, limit: int) -> list[ArchiveStudy]:
        """Every study, `limit` at a time, in the archive's own order (reconciliation)."""
        ...

    async def contents(
        self, studies: list[ArchiveStudy], max_instances: int
    ) -> dict[str, StudyContents]:
        """Series (and, up to `max_instances` in all, instances) of these studies."""
        ...

    async def instance_attributes(self, resource_id: str) -> Mapping[str, Any] | None: ...

    async def count_studies(self) -> int | None: ...


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

    async def study_by_id(self, resource_id: str) -> ArchiveStudy | None:
        return _archive_study(await self._archive.json("GET", f"/studies/{resource_id}"))

    async def study_by_uid(self, study_instance_uid: str) -> ArchiveStudy | None:
        found = await self._archive.json(
            "POST", "/tools/lookup", content=study_instance_uid.encode("ascii")
        )
        for hit in found or []:
            if hit.get("Type") == "Study":
                study = await self.study_by_id(str(hit["ID"]))
                if study is not None and study.study_instance_uid == study_instance_uid:
                    return study
        return None

    async def studies_page(self, since: int, limit: int) -> list[ArchiveStudy]:
        body = await self._archive.json("GET", "/studies", f"expand&since={since}&limit={limit}")
        return [s for s in map(_archive_study, body or []) if s is not None]

    async def contents(
        self, studies: list[ArchiveStudy], max_instances: int
    ) -> dict[str, StudyContents]:
        """Series and instances of many studies in two queries (`/tools/find`, UID list)."""
        uid_of = {s.archive_id: s.study_instance_uid for s in studies}
        out = {s.study_instance_uid: StudyContents() for s in studies}
        if not studies:
            return out
        query = {"StudyInstanceUID": "\\".join(sorted(set(uid_of.values())))}
        series = await self._archive.json(
            "POST",
            "/tools/find",
            content=_body({"Level": "Series", "Query": query, "Expand": True}),
        )
        series_uid: dict[str, tuple[str, str]] = {}
        for item in series or []:
            study = uid_of.get(str(item.get("ParentStudy")))
            tags = item.get("MainDicomTags") or {}
            uid = tags.get("SeriesInstanceUID")
            if study is None or not isinstance(uid, str):
                continue
            contents = out[study]
            contents.series[uid] = str(tags.get("Modality") or "").strip()
            instances = item.get("Instances") or []
            contents.num_instances += len(instances)
            if contents.first_instance is None and instances:
                contents.first_instance = str(instances[0])
            series_uid[str(item.get("ID"))] = (study, uid)
        if 0 < sum(c.num_instances for c in out.values()) <= max_instances:
            found = await self._archive.json(
                "POST",
                "/tools/find",
                content=_body({"Level": "Instance", "Query": query, "Expand": True}),
            )
            for item in found or []:
                parent = series_uid.get(str(item.get("ParentSeries")))
                sop = (item.get("MainDicomTags") or {}).get("SOPInstanceUID")
                if parent is not None and isinstance(sop, str):
                    out[parent[0]].instances.append((sop, parent[1]))
        return out

    async def instance_attributes(self, resource_id: str) -> Mapping[str, Any] | None:
        tags = await self._archive.json("GET", f"/instances/{resource_id}/simplified-tags")
        return tags if isinstance(tags, dict) else None

    async def count_studies(self) -> int | None:
        body = await self._archive.json("GET", "/statistics")
        count = (body or {}).get("CountStudies")
        return int(count) if isinstance(count, int) else None


def _body(data: object) -> bytes:
    import json

    return json.dumps(data).encode()


def _archive_study(item: Any) -> ArchiveStudy | None:
    """Orthanc's expanded study (`/studies/{id}`, `/studies?expand`) as an `ArchiveStudy`."""
    if not isinstance(item, dict):
        return None
    attributes: dict[str, str] = {}
    for group in ("PatientMainDicomTags", "MainDicomTags"):
        tags = item.get(group)
        if isinstance(tags, dict):
            attributes.update({k: str(v) for k, v in tags.items() if isinstance(v, str)})
    uid = attributes.get("StudyInstanceUID", "").strip()
    if not uid or not isinstance(item.get("ID"), str):
        return None
    return ArchiveStudy(
        item["ID"],
        uid,
        attributes,
        str(item.get("LastUpdate") or ""),
        len(item.get("Series") or []),
    )


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
