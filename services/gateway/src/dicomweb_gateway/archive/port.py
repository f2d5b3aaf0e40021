"""The archive port: what the gateway needs from any archive, at the level of transactions.

Routes, the authorizer, the STOW path, the DIMSE door and the study index all talk to the archive
through one `Archive` (ARCHITECTURE section 8, "Archive port"). Each archive product's facts
(query encoding, URL building, missing transactions, native REST extras) live in exactly one
adapter module of this package, chosen by `settings.archive.kind` (`open_archive`). One adapter
instance, with one connection pool, serves the whole worker process.

The study index reads the archive through the adapter's `IndexSource` (`Archive.index_source`):
studies page by page (the reconciliation walk), their series and instances, one instance's
attributes (ingest rules), and, where the product has one, a change feed (an optional
capability: `IndexSource.has_change_feed`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from ..parse import QidoQuery, Resource


@dataclass(frozen=True)
class Location:
    """Where an object sits in the archive's hierarchy."""

    study_instance_uid: str
    series_instance_uid: str | None
    patient_id: str


@dataclass(frozen=True)
class Change:
    seq: int
    change_type: str  # "NewStudy", "StableStudy" or "Deleted" (store/feed.py)
    resource_type: str
    resource_id: str  # the archive's own id of the resource


@dataclass(frozen=True)
class ArchiveStudy:
    """A study as the archive's own index describes it (no file is read for this)."""

    archive_id: str
    study_instance_uid: str
    attributes: dict[str, str]  # study and patient main tags, by PS3.6 keyword
    last_update: str = ""  # anything that changes when the study does
    num_series: int = 0


@dataclass
class StudyContents:
    """A study's series (with modality) and instances, from the archive's index."""

    series: dict[str, str] = field(default_factory=dict)  # SeriesInstanceUID -> Modality
    instances: list[tuple[str, str]] = field(default_factory=list)  # (SOP UID, series UID)
    num_instances: int = 0
    first_instance: str | None = None  # the archive's id of one instance


class IndexSource(Protocol):
    """What the study index reads from the archive (store/indexer.py, store/feed.py)."""

    @property
    def has_change_feed(self) -> bool:
        """False: `changes` is always empty; the index is kept by STOW and reconciliation."""
        ...

    async def study_attributes(self, study_instance_uid: str) -> Mapping[str, Any] | None:
        """Attributes (PS3.6 keywords) of one instance of the study; None if not stored."""
        ...

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

    def study_id(self, patient_id: str, study_instance_uid: str) -> str:
        """The archive's own id of a study (`ArchiveStudy.archive_id`), computed locally."""
        ...


class Archive(Protocol):
    """One archive, one connection pool, transaction-level operations (PS3.18 names)."""

    kind: str

    @property
    def index_source(self) -> IndexSource: ...

    def url_map(self, public_url: str) -> tuple[str, str]:
        """(the archive's DICOMweb root as it writes it in bodies, the gateway's public root)."""
        ...

    async def search(
        self, path: str, query: QidoQuery, always: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """QIDO-RS at `path` (`/studies`, `/studies/{uid}/series`, ...): DICOM JSON results
        matching `query` exactly (no pagination: the gateway pages permitted results), with the
        `always` attributes returned too."""
        ...

    async def retrieve(self, resource: Resource, headers: Mapping[str, str]) -> httpx.Response:
        """WADO-RS / WADO-URI / rendered / thumbnail: the archive's streamed answer (the caller
        closes it; statuses are the caller's to map)."""
        ...

    async def store(self, path: str, content_type: str, body: bytes) -> httpx.Response:
        """STOW-RS of a multipart body at `path` (`/studies` or `/studies/{uid}`)."""
        ...

    async def delete(
        self, study: str, series: str | None = None, patient_id: str | None = None
    ) -> bool:
        """Delete exactly this study (or this series of it); False when not found."""
        ...

    async def delete_instance(self, study: str, series: str, sop_instance_uid: str) -> bool: ...

    async def locate(self, level: str, uids: Iterable[str]) -> dict[str, set[Location]]:
        """Resolve owners: where the archive holds each UID now (never cached)."""
        ...

    async def study_attributes(self, study_instance_uid: str) -> Mapping[str, Any] | None:
        """Attributes (PS3.6 keywords) of one instance of the study (ingest rules)."""
        ...

    async def ping(self) -> None:
        """Raise a GatewayError unless the archive answers."""
        ...

    async def close(self) -> None: ...
