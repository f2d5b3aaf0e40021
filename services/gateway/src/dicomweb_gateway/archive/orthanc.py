"""The Orthanc archive adapter (Orthanc 1.10.1 + DICOMweb plugin 1.7).

Every difference between this archive and plain PS3.18 lives here (ARCHITECTURE section 3):
- the plugin builds RetrieveURL / BulkDataURI from the RFC 7239 `Forwarded` header only, so the
  gateway sends its public host and scheme there (X-Forwarded-* is ignored by the plugin);
- Orthanc 1.10 does not percent-decode query arguments: queries arrive already canonical
  (parse.QidoQuery.archive_query) and are sent as a raw query string;
- the plugin has no DELETE: a study or series is deleted through Orthanc's REST API after
  looking its Orthanc identifier up with /tools/lookup;
- the plugin has no thumbnails: an instance thumbnail is a small rendered image;
- the plugin refuses `type="*/*"` in a frames Accept header (`frames_accept`).
The archive's credentials and client certificate are injected in exactly one place
(`_ArchiveAuth` and the client's TLS context).
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..errors import GatewayError, service_unavailable
from ..settings import Settings

DICOMWEB_ROOT = "/dicom-web"
WADO_URI_ROOT = "/wado"


class _ArchiveAuth(httpx.Auth):
    """HTTP Basic credentials for the archive: the only place they are added (STYLE rule 7)."""

    def __init__(self, username: str, password: str) -> None:
        self._header = httpx.BasicAuth(username, password)._auth_header

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


def archive_tls_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(settings.archive.ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.archive.client_cert and settings.archive.client_key:
        context.load_cert_chain(str(settings.archive.client_cert), str(settings.archive.client_key))
    return context


def timeout_error(detail: str) -> GatewayError:
    return GatewayError(504, "archive_timeout", "upstream timeout", detail)


def unavailable(detail: str) -> GatewayError:
    return service_unavailable(detail, retry_after=5)


class OrthancArchive:
    """One pooled client to the archive for the whole worker process."""

    def __init__(
        self,
        base_url: str,
        public_url: str,
        username: str,
        password: str,
        *,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        public = urlsplit(self.public_url)
        # RFC 7239: host and proto of the gateway as the client sees it. RFC 7239 wants
        # `host="name:port"` quoted, but plugin 1.7 copies the quotes into every URL it builds,
        # so the value goes unquoted (it holds no characters that need quoting).
        self.forwarded = f"host={public.netloc};proto={public.scheme}"
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            auth=_ArchiveAuth(username, password),
            verify=verify,
            transport=transport,
            # Connect fast or report the archive down; reads may take the configured time.
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
            # The archive (civetweb) closes a connection idle for 1 s; reusing one it is closing
            # fails the request ("archive unreachable"), so idle ones expire here first.
            limits=httpx.Limits(
                max_connections=64, max_keepalive_connections=32, keepalive_expiry=0.5
            ),
            follow_redirects=False,
            trust_env=False,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> OrthancArchive:
        return cls(
            settings.archive.url,
            settings.public_url,
            settings.archive.username,
            settings.archive.password(),
            verify=archive_tls_context(settings) if transport is None else False,
            timeout=settings.archive.timeout_seconds,
            transport=transport,
        )

    async def close(self) -> None:
        await self.client.aclose()

    # ------------------------------------------------------------------ raw exchange

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Forwarded": self.forwarded, "Accept-Encoding": "identity"}
        if extra:
            headers.update(extra)
        return headers

    async def send(
        self,
        method: str,
        path: str,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        content: Any = None,
        stream: bool = True,
    ) -> httpx.Response:
        """Send one request; the caller closes the (streamed) response. Errors are typed."""
        url = httpx.URL(self.base_url + path)
        if query:
            # Raw query bytes: already validated and canonical (no second encoding).
            url = url.copy_with(query=query.encode("ascii"))
        request = self.client.build_request(
            method, url, headers=self.headers(headers), content=content
        )
        try:
            return await self.client.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                raise unavailable(f"archive connect: {exc!r}") from None
            raise timeout_error(f"archive read: {exc!r}") from None
        except httpx.TransportError as exc:
            raise unavailable(f"archive unreachable: {exc!r}") from None

    async def json(self, method: str, path: str, query: str = "", content: Any = None) -> Any:
        response = await self.send(
            method, path, query, {"Accept": "application/json"}, content, stream=False
        )
        if response.status_code == 404:
            return None
        if response.status_code == 204:
            return []
        if response.status_code >= 400:
            raise GatewayError(
                502,
                "archive_error",
                "upstream error",
                f"archive {method} {path} -> {response.status_code}",
            )
        return response.json()

    async def ping(self) -> None:
        response = await self.send("GET", "/system", stream=False)
        if response.status_code != 200:
            raise unavailable(f"archive /system -> {response.status_code}")

    # ------------------------------------------------------------------ UID identities (AP-7)

    async def locate(self, level: str, uids: Iterable[str]) -> dict[str, set[Location]]:
        """Where the archive holds each UID now: uid -> {(study, series, patient)}.

        One QIDO per 50 UIDs (PS3.18 UID list matching), never cached: this is what a store is
        checked against before anything is forwarded.
        """
        resource, match = _LEVELS[level]
        out: dict[str, set[Location]] = {}
        wanted = sorted(set(uids))
        for start in range(0, len(wanted), 50):
            chunk = wanted[start : start + 50]
            query = (
                f"{match}={','.join(chunk)}&includefield=0020000D&includefield=0020000E"
                "&includefield=00100020"
            )
            for item in await self.json("GET", f"{DICOMWEB_ROOT}/{resource}", query) or []:
                uid = _value(item, _TAG_OF[match])
                study = _value(item, "0020000D")
                if uid and study:
                    out.setdefault(uid, set()).add(
                        Location(study, _value(item, "0020000E"), _value(item, "00100020") or "")
                    )
        return out

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
        found = await self.json("POST", "/tools/lookup", content=uid.encode("ascii")) or []
        targets: list[str] = []
        for item in found:
            if item.get("Type") != wanted:
                continue
            path = f"/{'series' if series else 'studies'}/{item['ID']}"
            resource = await self.json("GET", path) or {}
            if series:
                parent = await self.json("GET", f"/studies/{resource.get('ParentStudy')}") or {}
                if _tag(parent, "MainDicomTags", "StudyInstanceUID") == study:
                    targets.append(path)
            elif (
                patient_id is None
                or (_tag(resource, "PatientMainDicomTags", "PatientID") or "") == patient_id
            ):
                targets.append(path)
        for path in targets:
            await self._delete(path)
        return bool(targets)

    async def delete_instance(self, study: str, series: str, sop_instance_uid: str) -> bool:
        """Delete one instance, only where it sits under this study and series."""
        found = await self.json("POST", "/tools/lookup", content=sop_instance_uid.encode()) or []
        deleted = False
        for item in found:
            if item.get("Type") != "Instance":
                continue
            tags = await self.json("GET", f"/instances/{item['ID']}/simplified-tags") or {}
            if tags.get("StudyInstanceUID") == study and tags.get("SeriesInstanceUID") == series:
                await self._delete(f"/instances/{item['ID']}")
                deleted = True
        return deleted

    async def _delete(self, path: str) -> None:
        response = await self.send("DELETE", path, stream=False)
        if response.status_code >= 400:
            raise GatewayError(
                502,
                "archive_error",
                "upstream error",
                f"archive DELETE {path} -> {response.status_code}",
            )


def study_resource_id(patient_id: str, study_instance_uid: str) -> str:
    """Orthanc's own id of a study: SHA-1 of "PatientID|StudyInstanceUID", in five groups of
    eight hex digits (Orthanc's DicomInstanceHasher); lets the index follow `/changes`."""
    key = f"{patient_id}|{study_instance_uid}".encode()
    digest = hashlib.sha1(key, usedforsecurity=False).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


@dataclass(frozen=True)
class Location:
    """Where an object sits in the archive's hierarchy."""

    study_instance_uid: str
    series_instance_uid: str | None
    patient_id: str


_LEVELS = {
    "study": ("studies", "StudyInstanceUID"),
    "series": ("series", "SeriesInstanceUID"),
    "instance": ("instances", "SOPInstanceUID"),
}
_TAG_OF = {
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
    "SOPInstanceUID": "00080018",
}


def _tag(resource: Mapping[str, Any], group: str, keyword: str) -> str | None:
    tags = resource.get(group)
    value = tags.get(keyword) if isinstance(tags, dict) else None
    return value if isinstance(value, str) else None


_ANY_TYPE = re.compile(r'type="?\*/\*"?', re.IGNORECASE)


def frames_accept(accept: str | None) -> str | None:
    """Plugin 1.7 refuses `multipart/related; type="*/*"` for frames and bulk data (400), which
    PS3.18 8.7.3.5.2 allows and dicomweb-client sends by default: ask for what it means, any
    transfer syntax as application/octet-stream parts."""
    if accept and _ANY_TYPE.search(accept):
        return 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    return accept


def _value(item: Mapping[str, Any], tag: str) -> str | None:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return None
