"""The standard DICOMweb adapter (`archive.kind: dicomweb`): PS3.18 transactions only.

No product REST call at all, so it serves dcm4chee-arc, a cloud DICOM service or any conformant
archive (docs/archives.md). `archive.url` is the archive's DICOMweb service root (for
dcm4chee-arc `https://<host>:8443/dcm4chee-arc/aets/DCM4CHEE/rs`); every request is that root
plus a PS3.18 resource path:

- QIDO-RS with percent-encoded values (PS3.18 8.3.4.1) and `includefield` by tag;
- WADO-RS, rendered (PS3.18 8.7.4) and thumbnails; a thumbnail the archive does not offer
  (404, 400, 406, 501) is asked again as a rendered image of the same resource, which PS3.18
  defines too; WADO-URI is answered from WADO-RS: `contentType=application/dicom` as the
  instance (single part, `Accept: application/dicom`), anything else rendered;
- STOW-RS; DELETE of a study, series or instance as the archives that offer it spell it
  (`DELETE <root>/studies/{uid}[/series/{uid}]`); an archive without it answers 405/501, which
  the gateway reports as `delete_unsupported` (501);
- owners and placement by QIDO with UID lists (PS3.18 8.3.4.1, "UID list matching").

Without a change feed (`IndexSource.has_change_feed` is False) the study index is kept by STOW
through the gateway (`Authorizer.on_stored`) plus the bounded, resumable reconciliation walk
(store/indexer.py `Reconciler`) over `QidoIndexSource.studies_page`, which pages QIDO-RS
`/studies` with `offset`/`limit`. The archive's id of a study is its StudyInstanceUID.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from .. import dicomjson
from ..errors import GatewayError
from ..forward import archive_error
from ..parse import QIDO_RETURN_TAGS, QidoQuery, Resource, Transaction
from ..settings import Settings
from .client import ArchiveClient, upstream_error
from .port import ArchiveStudy, Change, IndexSource, Location, StudyContents

DICOM_JSON = "application/dicom+json"
UIDS_PER_QUERY = 50

LEVELS = {
    "study": ("studies", "StudyInstanceUID"),
    "series": ("series", "SeriesInstanceUID"),
    "instance": ("instances", "SOPInstanceUID"),
}
TAG_OF = {
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
    "SOPInstanceUID": "00080018",
}
_THUMBNAIL_OF = {
    Transaction.RETRIEVE_STUDY_THUMBNAIL: Transaction.RETRIEVE_RENDERED_STUDY,
    Transaction.RETRIEVE_SERIES_THUMBNAIL: Transaction.RETRIEVE_RENDERED_SERIES,
    Transaction.RETRIEVE_INSTANCE_THUMBNAIL: Transaction.RETRIEVE_RENDERED_INSTANCE,
}
# Study attributes the reconciliation walk asks for (the study index's keys, store/matching.py).
STUDY_FIELDS = (
    "00080020",  # StudyDate
    "00080030",  # StudyTime
    "00080050",  # AccessionNumber
    "00080061",  # ModalitiesInStudy
    "00080090",  # ReferringPhysicianName
    "00100010",  # PatientName
    "00100020",  # PatientID
    "00200010",  # StudyID
    "00081030",  # StudyDescription
    "00201206",  # NumberOfStudyRelatedSeries
    "00201208",  # NumberOfStudyRelatedInstances
)
# Service roots other archives put their DICOMweb and REST APIs under (dcm4chee-arc's
# /dcm4chee-arc/aets/<AET>/rs, /wado-rs of several products): never served by the gateway.
NATIVE_ROOTS = frozenset({"wado-rs", "rs", "dcm4chee-arc"})
_ANY_TYPE = re.compile(r'type="?\*/\*"?', re.IGNORECASE)
_SAFE = "*?^-._~,:'/()+"  # left unescaped in query values (PS3.18 8.3.4.1 allows all of these)


def encode_query(query: QidoQuery, always: tuple[str, ...] = ()) -> str:
    """A QIDO-RS query as PS3.18 8.3.4.1 writes it: keywords, percent-encoded UTF-8 values,
    `includefield` by tag, no pagination (the gateway pages permitted results)."""
    parts = [f"{k}={quote(v, safe=_SAFE)}" for k, v in query.matches]
    fields = list(dict.fromkeys((*query.includefields, *always)))
    parts += [f"includefield={QIDO_RETURN_TAGS[f]}" for f in fields]
    if query.fuzzymatching:
        parts.append("fuzzymatching=true")
    return "&".join(parts)


def frames_accept(accept: str | None) -> str | None:
    """`multipart/related; type="*/*"` (PS3.18 8.7.3.5.2; dicomweb-client's default for frames
    and bulk data) asked as what it means in the spelling every archive accepts: any transfer
    syntax as application/octet-stream parts (Orthanc's plugin 1.7 refuses the `*/*` form)."""
    if accept and _ANY_TYPE.search(accept):
        return 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    return accept


class DicomwebArchive:
    """`Archive` over PS3.18 only; the Orthanc adapter refines it (archive/orthanc.py)."""

    kind = "dicomweb"
    # Where the DICOMweb service sits under `archive.url` ("" here: the URL is the root).
    dicomweb_root = ""

    def __init__(self, http: ArchiveClient, public_url: str) -> None:
        self.http = http
        self.public_url = public_url.rstrip("/")
        self._source: IndexSource = QidoIndexSource(self)

    @classmethod
    def from_settings(
        cls, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> DicomwebArchive:
        http = ArchiveClient(
            settings.archive.url,
            settings.archive.username,
            settings.archive.password(),
            **ArchiveClient.options(settings, transport),
        )
        return cls(http, settings.public_url)

    @property
    def index_source(self) -> IndexSource:
        return self._source

    def url_map(self, public_url: str) -> tuple[str, str]:
        return self.http.base_url + self.dicomweb_root, public_url.rstrip("/") + "/dicom-web"

    async def close(self) -> None:
        await self.http.close()

    async def ping(self) -> None:
        response = await self.http.send(
            "GET",
            self.dicomweb_root + "/studies",
            "limit=1&includefield=0020000D",
            {"Accept": DICOM_JSON},
            stream=False,
        )
        if response.status_code not in (200, 204):
            raise upstream_error("GET", "/studies", response.status_code)

    # ------------------------------------------------------------------ QIDO-RS

    def encode(self, query: QidoQuery, always: tuple[str, ...]) -> str:
        return encode_query(query, always)

    async def qido(self, path: str, query: str, missing_ok: bool = False) -> list[dict[str, Any]]:
        """A DICOM JSON answer; `missing_ok`: a 404 (no such study or series) is no result."""
        response = await self.http.send(
            "GET", self.dicomweb_root + path, query, {"Accept": DICOM_JSON}, stream=False
        )
        if response.status_code == 204 or (response.status_code == 200 and not response.content):
            return []
        if response.status_code == 404 and missing_ok:
            return []
        if response.status_code >= 400:
            raise archive_error(response.status_code, "search")
        results = response.json()
        return results if isinstance(results, list) else []

    async def search(
        self, path: str, query: QidoQuery, always: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        return await self.qido(path, self.encode(query, always))

    async def locate(self, level: str, uids: Iterable[str]) -> dict[str, set[Location]]:
        """Where the archive holds each UID now: uid -> {(study, series, patient)}.

        One QIDO per 50 UIDs (PS3.18 UID list matching), never cached: this is what a store is
        checked against before anything is forwarded.
        """
        resource, match = LEVELS[level]
        out: dict[str, set[Location]] = {}
        wanted = sorted(set(uids))
        for start in range(0, len(wanted), UIDS_PER_QUERY):
            chunk = wanted[start : start + UIDS_PER_QUERY]
            query = (
                f"{match}={','.join(chunk)}&includefield=0020000D&includefield=0020000E"
                "&includefield=00100020"
            )
            for item in await self.qido(f"/{resource}", query):
                uid = dicomjson.first(item, TAG_OF[match])
                study = dicomjson.first(item, "0020000D")
                if uid and study:
                    out.setdefault(uid, set()).add(
                        Location(
                            study,
                            dicomjson.first(item, "0020000E"),
                            dicomjson.first(item, "00100020") or "",
                        )
                    )
        return out

    # ------------------------------------------------------------------ WADO-RS, rendered

    def target(self, resource: Resource) -> tuple[str, str]:
        """(path, query) of a retrieval at the archive."""
        if resource.transaction is Transaction.RETRIEVE_WADO_URI:
            return self._wado_uri_target(resource)
        return self.dicomweb_root + resource.archive_path(), resource.raw_query

    def _wado_uri_target(self, resource: Resource) -> tuple[str, str]:
        args = dict(p.split("=", 1) for p in resource.raw_query.split("&") if "=" in p)
        rendered = args.get("contentType", "image/jpeg").split(",")[0] != "application/dicom"
        base = Resource(
            Transaction.RETRIEVE_RENDERED_INSTANCE if rendered else Transaction.RETRIEVE_INSTANCE,
            resource.study_instance_uid,
            resource.series_instance_uid,
            resource.sop_instance_uid,
        )
        query = []
        if rendered and "rows" in args and "columns" in args:
            query.append(f"viewport={args['columns']},{args['rows']}")
        return self.dicomweb_root + base.archive_path(), "&".join(query)

    def retrieve_headers(self, resource: Resource, headers: Mapping[str, str]) -> dict[str, str]:
        out = dict(headers)
        if resource.transaction in (Transaction.RETRIEVE_FRAMES, Transaction.RETRIEVE_BULKDATA):
            accept = frames_accept(out.get("accept"))
            if accept:
                out["accept"] = accept
        if resource.transaction is Transaction.RETRIEVE_WADO_URI:
            args = dict(p.split("=", 1) for p in resource.raw_query.split("&") if "=" in p)
            media = args.get("contentType", "image/jpeg").split(",")[0].replace("%20", " ")
            out["accept"] = media if media != "application/dicom" else "application/dicom"
        return out

    async def retrieve(self, resource: Resource, headers: Mapping[str, str]) -> httpx.Response:
        path, query = self.target(resource)
        sent = self.retrieve_headers(resource, headers)
        upstream = await self.http.send("GET", path, query, sent)
        thumbnail = resource.transaction in _THUMBNAIL_OF and path.endswith("/thumbnail")
        if thumbnail and upstream.status_code in (400, 404, 406, 501):
            # PS3.18 8.7.5 thumbnails are optional for an origin server; a rendered image of
            # the same resource is the standard fallback.
            await upstream.aclose()
            rendered = Resource(
                _THUMBNAIL_OF[resource.transaction],
                resource.study_instance_uid,
                resource.series_instance_uid,
                resource.sop_instance_uid,
            )
            upstream = await self.http.send(
                "GET", self.dicomweb_root + rendered.archive_path(), resource.raw_query, sent
            )
        return upstream

    # ------------------------------------------------------------------ STOW-RS, DELETE

    async def store(self, path: str, content_type: str, body: bytes) -> httpx.Response:
        return await self.http.send(
            "POST",
            self.dicomweb_root + path,
            headers={"Accept": DICOM_JSON, "Content-Type": content_type},
            content=body,
            stream=False,
        )

    async def delete(
        self, study: str, series: str | None = None, patient_id: str | None = None
    ) -> bool:
        """DELETE of exactly the authorized resource: the path names study and series, so the
        archive's own hierarchy does the rest (no UID look-up across studies)."""
        del patient_id  # the archive matches the study by its UID within its own hierarchy
        path = f"/studies/{study}" + (f"/series/{series}" if series else "")
        return await self._delete(path)

    async def delete_instance(self, study: str, series: str, sop_instance_uid: str) -> bool:
        return await self._delete(f"/studies/{study}/series/{series}/instances/{sop_instance_uid}")

    async def _delete(self, path: str) -> bool:
        response = await self.http.send("DELETE", self.dicomweb_root + path, stream=False)
        if response.status_code == 404:
            return False
        if response.status_code in (405, 501):
            raise GatewayError(
                501,
                "delete_unsupported",
                "the archive does not support deletion",
                f"archive DELETE {path} -> {response.status_code}",
            )
        if response.status_code >= 400:
            raise upstream_error("DELETE", path, response.status_code)
        return True

    # ------------------------------------------------------------------ attributes

    async def study_attributes(self, study_instance_uid: str) -> Mapping[str, Any] | None:
        return await self._source.study_attributes(study_instance_uid)


class QidoIndexSource:
    """The study index's view of an archive without a change feed: QIDO-RS and metadata only.
    An instance's id is `study/series/instance` (its three UIDs)."""

    has_change_feed = False

    def __init__(self, archive: DicomwebArchive) -> None:
        self._archive = archive
        self._limit = asyncio.Semaphore(8)

    def study_id(self, patient_id: str, study_instance_uid: str) -> str:
        del patient_id
        return study_instance_uid

    async def changes(self, since: int, limit: int) -> tuple[list[Change], int, bool]:
        del limit
        return [], since, True

    async def study_attributes(self, study_instance_uid: str) -> Mapping[str, Any] | None:
        found = await self._archive.qido(
            f"/studies/{study_instance_uid}/instances",
            "limit=1&includefield=0020000E&includefield=00080018",
            missing_ok=True,
        )
        for item in found:
            series = dicomjson.first(item, "0020000E")
            sop = dicomjson.first(item, "00080018")
            if series and sop:
                return await self.instance_attributes(f"{study_instance_uid}/{series}/{sop}")
        return None

    async def instance_attributes(self, resource_id: str) -> Mapping[str, Any] | None:
        study, series, sop = resource_id.split("/")
        found = await self._archive.qido(
            f"/studies/{study}/series/{series}/instances/{sop}/metadata",
            "",
            missing_ok=True,
        )
        return dicomjson.keywords(found[0]) if found else None

    async def study_by_id(self, resource_id: str) -> ArchiveStudy | None:
        return await self.study_by_uid(resource_id)

    async def study_by_uid(self, study_instance_uid: str) -> ArchiveStudy | None:
        query = f"StudyInstanceUID={study_instance_uid}&" + _fields(STUDY_FIELDS)
        for item in await self._archive.qido("/studies", query, missing_ok=True):
            study = _archive_study(item)
            if study is not None and study.study_instance_uid == study_instance_uid:
                return study
        return None

    async def studies_page(self, since: int, limit: int) -> list[ArchiveStudy]:
        query = f"offset={since}&limit={limit}&" + _fields(STUDY_FIELDS)
        found = await self._archive.qido("/studies", query, missing_ok=True)
        return [s for s in map(_archive_study, found) if s is not None]

    async def contents(
        self, studies: list[ArchiveStudy], max_instances: int
    ) -> dict[str, StudyContents]:
        out = {s.study_instance_uid: StudyContents() for s in studies}

        async def read(uid: str) -> None:
            async with self._limit:
                series = await self._archive.qido(
                    f"/studies/{uid}/series",
                    "includefield=00080060&includefield=00201209",
                    missing_ok=True,
                )
            contents = out[uid]
            for item in series:
                series_uid = dicomjson.first(item, "0020000E")
                if series_uid:
                    contents.series[series_uid] = (dicomjson.first(item, "00080060") or "").strip()
                    count = dicomjson.texts(item, "00201209")
                    # An archive's answer is input too: a non-number counts as nothing.
                    contents.num_instances += int(count[0]) if count and count[0].isdigit() else 0

        await asyncio.gather(*(read(uid) for uid in out))
        budget = max_instances

        async def instances(uid: str) -> None:
            async with self._limit:
                found = await self._archive.qido(
                    f"/studies/{uid}/instances",
                    "includefield=0020000E&includefield=00080018",
                    missing_ok=True,
                )
            contents = out[uid]
            for item in found:
                sop = dicomjson.first(item, "00080018")
                series_uid = dicomjson.first(item, "0020000E")
                if sop and series_uid:
                    contents.instances.append((sop, series_uid))
                    if contents.first_instance is None:
                        contents.first_instance = f"{uid}/{series_uid}/{sop}"

        wanted = []
        for uid, contents in out.items():
            if contents.num_instances and contents.num_instances <= budget:
                budget -= contents.num_instances
                wanted.append(uid)
        await asyncio.gather(*(instances(uid) for uid in wanted))
        for uid, contents in out.items():
            if contents.first_instance is None and contents.series:
                # Too big for the instance map: one instance stands for the study (labels).
                found = await self._archive.qido(
                    f"/studies/{uid}/instances",
                    "limit=1&includefield=0020000E&includefield=00080018",
                    missing_ok=True,
                )
                for item in found:
                    sop = dicomjson.first(item, "00080018")
                    series_uid = dicomjson.first(item, "0020000E")
                    if sop and series_uid:
                        contents.first_instance = f"{uid}/{series_uid}/{sop}"
        return out

    async def count_studies(self) -> int | None:
        return None  # PS3.18 has no count of all studies


def _fields(tags: Iterable[str]) -> str:
    return "&".join(f"includefield={t}" for t in tags)


def _archive_study(item: Mapping[str, Any]) -> ArchiveStudy | None:
    """A QIDO-RS study result as an `ArchiveStudy`; its related counts stand for LastUpdate."""
    attributes = dicomjson.keywords(item)
    uid = attributes.get("StudyInstanceUID", "").strip()
    if not uid:
        return None
    series = attributes.pop("NumberOfStudyRelatedSeries", "0")
    instances = attributes.pop("NumberOfStudyRelatedInstances", "0")
    return ArchiveStudy(
        uid, uid, attributes, f"{series}/{instances}", int(series) if series.isdigit() else 0
    )


ADAPTER = DicomwebArchive
