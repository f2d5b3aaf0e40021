"""The Orthanc archive adapter (`archive.kind: orthanc`; Orthanc 1.10.1 + DICOMweb plugin 1.7).

Every difference between this archive and plain PS3.18 lives here (ARCHITECTURE section 3); the
rest is the standard adapter it refines (archive/dicomweb.py):
- the DICOMweb service sits at `/dicom-web` under `archive.url`, WADO-URI at `/wado`;
- the plugin builds RetrieveURL / BulkDataURI from the RFC 7239 `Forwarded` header only, so the
  gateway sends its public host and scheme there (X-Forwarded-* is ignored by the plugin);
- Orthanc 1.10 does not percent-decode query arguments: values are sent raw, characters it cannot
  read literally as `*` wildcards, and the gateway matches those values exactly (`encode`);
- the plugin has no DELETE: a study or series is deleted through Orthanc's REST API after
  looking its Orthanc identifier up with /tools/lookup;
- the plugin has no thumbnails: a thumbnail is a small rendered image;
- the plugin refuses `type="*/*"` in a frames Accept header: the standard adapter's
  `frames_accept` spelling serves it too;
- the civetweb server closes idle connections after 1 s (the pool expires them first);
- Orthanc's REST API has a change feed (`/changes`) and its own study ids (`OrthancSource`),
  which keep the study index current without a full walk.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from .. import dicomjson
from ..parse import QIDO_KEYS, QIDO_RETURN_TAGS, QidoQuery, Resource, Transaction
from ..settings import Settings
from .client import ArchiveClient, unavailable, upstream_error
from .dicomweb import DicomwebArchive
from .port import ArchiveStudy, Change, IndexSource, StudyContents

WADO_URI_ROOT = "/wado"
# Orthanc's REST API, Explorer and viewer plugins at the root (the gateway never serves them).
NATIVE_ROOTS = frozenset(
    {
        "tools",
        "instances",
        "series",
        "studies",
        "patients",
        "system",
        "plugins",
        "changes",
        "exports",
        "modalities",
        "peers",
        "jobs",
        "statistics",
        "app",
        "ui",
        "orthanc",
        "osimis-viewer",
        "stone-webviewer",
        "dicom-web-old",
    }
)

# Characters Orthanc 1.10 reads literally in a raw query string: everything else is sent as a
# `*` wildcard and matched exactly by the gateway (`_exact_filters`).
_LITERAL = re.compile(r"^[A-Za-z0-9^*?\-.,_:'/()+]*$")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9^*?\-.,_:'/()+]+")


def encode_value(value: str) -> str:
    """The value as Orthanc receives it in a raw query string.

    Orthanc 1.10 does not percent-decode query values, and a request line cannot carry a raw
    space, `&`, `#`, `%` or a non-ASCII byte: each run of such characters is sent as the
    wildcard `*` (PS3.4 C.2.2.2.4), which can only widen the archive's answer, and the gateway
    then matches the real value itself (`exact_filters`), so the answer is exactly what the
    client asked for.
    """
    if _LITERAL.match(value):
        return value
    return _UNSAFE_RUN.sub("*", value)


def exact_filters(query: QidoQuery) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """(keyword, pattern) for values sent with wildcards in place of unreadable characters."""
    out = []
    for keyword, value in query.matches:
        if encode_value(value) != value:
            pattern = "".join(
                ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value
            )
            out.append((keyword, re.compile(pattern, re.IGNORECASE | re.DOTALL)))
    return tuple(out)


def encode_query(query: QidoQuery, always: tuple[str, ...] = ()) -> str:
    """The canonical raw query Orthanc 1.10 reads: keywords, raw values, no pagination."""
    parts = [f"{k}={encode_value(v)}" for k, v in query.matches]
    fields = list(query.includefields)
    fields += [f for f in always if f not in fields]
    fields += [k for k, _ in exact_filters(query) if k not in fields]
    parts += [f"includefield={QIDO_RETURN_TAGS[f]}" for f in fields]
    if query.fuzzymatching:
        parts.append("fuzzymatching=true")
    return "&".join(parts)


def study_resource_id(patient_id: str, study_instance_uid: str) -> str:
    """Orthanc's own id of a study: SHA-1 of "PatientID|StudyInstanceUID", in five groups of
    eight hex digits (Orthanc's DicomInstanceHasher); lets the index follow `/changes`."""
    key = f"{patient_id}|{study_instance_uid}".encode()
    digest = hashlib.sha1(key, usedforsecurity=False).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


_RENDERED_OF = {
    Transaction.RETRIEVE_STUDY_THUMBNAIL: Transaction.RETRIEVE_RENDERED_STUDY,
    Transaction.RETRIEVE_SERIES_THUMBNAIL: Transaction.RETRIEVE_RENDERED_SERIES,
    Transaction.RETRIEVE_INSTANCE_THUMBNAIL: Transaction.RETRIEVE_RENDERED_INSTANCE,
}


class OrthancArchive(DicomwebArchive):
    """`Archive` for Orthanc: the standard adapter plus Orthanc's quirks and REST extras."""

    kind = "orthanc"
    dicomweb_root = "/dicom-web"

    def __init__(self, http: ArchiveClient, public_url: str) -> None:
        super().__init__(http, public_url)
        self._source = OrthancSource(self)

    @classmethod
    def from_settings(
        cls, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> OrthancArchive:
        public = urlsplit(settings.public_url.rstrip("/"))
        http = ArchiveClient(
            settings.archive.url,
            settings.archive.username,
            settings.archive.password(),
            # The archive (civetweb) closes a connection idle for 1 s; reusing one it is closing
            # fails the request ("archive unreachable"), so idle ones expire here first.
            keepalive_expiry=0.5,
            # RFC 7239: host and proto of the gateway as the client sees it. RFC 7239 wants
            # `host="name:port"` quoted, but plugin 1.7 copies the quotes into every URL it
            # builds, so the value goes unquoted (it holds no characters that need quoting).
            headers={"Forwarded": f"host={public.netloc};proto={public.scheme}"},
            **ArchiveClient.options(settings, transport),
        )
        return cls(http, settings.public_url)

    def url_map(self, public_url: str) -> tuple[str, str]:
        # The plugin's URLs are built from `Forwarded`; any left with the archive's origin map
        # one to one (the DICOMweb root is /dicom-web on both sides).
        return self.http.base_url, public_url.rstrip("/")

    async def ping(self) -> None:
        response = await self.http.send("GET", "/system", stream=False)
        if response.status_code != 200:
            raise unavailable(f"archive /system -> {response.status_code}")

    # ------------------------------------------------------------------ QIDO-RS

    def encode(self, query: QidoQuery, always: tuple[str, ...]) -> str:
        return encode_query(query, always)

    async def search(
        self, path: str, query: QidoQuery, always: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        results = await self.qido(path, encode_query(query, always))
        # Values with unreadable characters were sent as wildcards: match them exactly here.
        for keyword, pattern in exact_filters(query):
            tag = QIDO_KEYS[keyword]
            results = [
                r for r in results if any(pattern.fullmatch(v) for v in dicomjson.texts(r, tag))
            ]
        return results

    # ------------------------------------------------------------------ retrieval

    def target(self, resource: Resource) -> tuple[str, str]:
        t = resource.transaction
        if t is Transaction.RETRIEVE_WADO_URI:
            return WADO_URI_ROOT, resource.raw_query
        if t in _RENDERED_OF:
            # Plugin 1.7 has no /thumbnail: a small rendered image instead (the parse layer put
            # `viewport`, 128x128 by default, in raw_query). For a study or a series the archive
            # renders a representative instance (the first of its first series), one image.
            base = Resource(
                _RENDERED_OF[t],
                resource.study_instance_uid,
                resource.series_instance_uid,
                resource.sop_instance_uid,
            )
            return self.dicomweb_root + base.archive_path(), resource.raw_query
        return self.dicomweb_root + resource.archive_path(), resource.raw_query

    def retrieve_headers(self, resource: Resource, headers: Mapping[str, str]) -> dict[str, str]:
        if resource.transaction is Transaction.RETRIEVE_WADO_URI:
            return dict(headers)  # Orthanc's own /wado reads `contentType` itself
        return super().retrieve_headers(resource, headers)

    # ------------------------------------------------------------------ DELETE (REST API)

    async def delete(
        self, study: str, series: str | None = None, patient_id: str | None = None
    ) -> bool:
        """Delete exactly one study, or one series of one study; False when not found.

        Orthanc's `/tools/lookup` finds every resource with a UID, whatever study it sits in, so
        each hit's place in the hierarchy is read back and only the one under the authorized
        study (and, for a study, the known patient) is deleted (AP-7).
        """
        uid, wanted = (series, "Series") if series else (study, "Study")
        found = await self.http.json("POST", "/tools/lookup", content=uid.encode("ascii")) or []
        targets: list[str] = []
        for item in found:
            if item.get("Type") != wanted:
                continue
            path = f"/{'series' if series else 'studies'}/{item['ID']}"
            resource = await self.http.json("GET", path) or {}
            if series:
                parent = (
                    await self.http.json("GET", f"/studies/{resource.get('ParentStudy')}") or {}
                )
                if _tag(parent, "MainDicomTags", "StudyInstanceUID") == study:
                    targets.append(path)
            elif (
                patient_id is None
                or (_tag(resource, "PatientMainDicomTags", "PatientID") or "") == patient_id
            ):
                targets.append(path)
        for path in targets:
            await self._rest_delete(path)
        return bool(targets)

    async def delete_instance(self, study: str, series: str, sop_instance_uid: str) -> bool:
        """Delete one instance, only where it sits under this study and series."""
        found = (
            await self.http.json("POST", "/tools/lookup", content=sop_instance_uid.encode()) or []
        )
        deleted = False
        for item in found:
            if item.get("Type") != "Instance":
                continue
            tags = await self.http.json("GET", f"/instances/{item['ID']}/simplified-tags") or {}
            if tags.get("StudyInstanceUID") == study and tags.get("SeriesInstanceUID") == series:
                await self._rest_delete(f"/instances/{item['ID']}")
                deleted = True
        return deleted

    async def _rest_delete(self, path: str) -> None:
        response = await self.http.send("DELETE", path, stream=False)
        if response.status_code >= 400:
            raise upstream_error("DELETE", path, response.status_code)


class OrthancSource:
    """The study index's view of Orthanc: its REST API (`/changes`, `/tools/lookup`,
    `/tools/find`, `/studies`, `/instances/{id}/simplified-tags`). Only Orthanc ids and POST
    bodies carry identifiers: no StudyInstanceUID appears in a URL of these background
    requests."""

    has_change_feed = True

    def __init__(self, archive: OrthancArchive) -> None:
        self._http = archive.http

    def study_id(self, patient_id: str, study_instance_uid: str) -> str:
        return study_resource_id(patient_id, study_instance_uid)

    async def study_attributes(self, study_instance_uid: str) -> Mapping[str, Any] | None:
        found = await self._http.json(
            "POST", "/tools/lookup", content=study_instance_uid.encode("ascii")
        )
        for hit in found or []:
            if hit.get("Type") == "Study":
                return await self._first_instance_attributes(str(hit["ID"]))
        return None

    async def _first_instance_attributes(self, resource_id: str) -> Mapping[str, Any] | None:
        # The study's first instance stands for the study: ingest rules match study-level
        # attributes (institution, patient, accession, trial) that all its instances share.
        instances = await self._http.json("GET", f"/studies/{resource_id}/instances")
        if not instances:
            return None
        return await self.instance_attributes(str(instances[0]["ID"]))

    async def changes(self, since: int, limit: int) -> tuple[list[Change], int, bool]:
        body = await self._http.json("GET", "/changes", f"since={since}&limit={limit}") or {}
        changes = [
            Change(int(c["Seq"]), str(c["ChangeType"]), str(c["ResourceType"]), str(c["ID"]))
            for c in body.get("Changes", [])
        ]
        return changes, int(body.get("Last", since)), bool(body.get("Done", True))

    async def study_by_id(self, resource_id: str) -> ArchiveStudy | None:
        return _archive_study(await self._http.json("GET", f"/studies/{resource_id}"))

    async def study_by_uid(self, study_instance_uid: str) -> ArchiveStudy | None:
        found = await self._http.json(
            "POST", "/tools/lookup", content=study_instance_uid.encode("ascii")
        )
        for hit in found or []:
            if hit.get("Type") == "Study":
                study = await self.study_by_id(str(hit["ID"]))
                if study is not None and study.study_instance_uid == study_instance_uid:
                    return study
        return None

    async def studies_page(self, since: int, limit: int) -> list[ArchiveStudy]:
        body = await self._http.json("GET", "/studies", f"expand&since={since}&limit={limit}")
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
        series = await self._http.json(
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
            found = await self._http.json(
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
        tags = await self._http.json("GET", f"/instances/{resource_id}/simplified-tags")
        return tags if isinstance(tags, dict) else None

    async def count_studies(self) -> int | None:
        body = await self._http.json("GET", "/statistics")
        count = (body or {}).get("CountStudies")
        return int(count) if isinstance(count, int) else None


def _check_source(source: OrthancSource) -> IndexSource:
    return source  # mypy: OrthancSource is an IndexSource


def _body(data: object) -> bytes:
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


def _tag(resource: Mapping[str, Any], group: str, keyword: str) -> str | None:
    tags = resource.get(group)
    value = tags.get(keyword) if isinstance(tags, dict) else None
    return value if isinstance(value, str) else None


ADAPTER = OrthancArchive
