"""Filter and rewrite archive answers before they leave (AP-1 QIDO half, AP-4, AP-6).

QIDO results keep only studies the caller may see; `limit`/`offset` are applied afterwards so
neither a count nor a page boundary reveals a hidden study. Archive URLs in bodies are
rewritten to the gateway's public URL, and only allow-listed response headers pass, so the
archive's `Server`, product, version and host never reach a client.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from . import dicomjson
from .parse import QidoQuery

# Response headers copied from the archive; everything else (Server, X-*, Set-Cookie, Location
# with an internal host, ...) is dropped.
RESPONSE_HEADERS = frozenset({"content-type", "content-length", "etag", "last-modified"})
_STUDY_UID = "0020000D"


def response_headers(headers: Iterable[tuple[str, str]], keep_length: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in RESPONSE_HEADERS and (keep_length or lower != "content-length"):
            out[lower] = value
    return out


class UrlRewriter:
    """Replace the archive origin (and its DICOMweb root) with the gateway's public URL."""

    def __init__(self, archive_url: str, public_url: str) -> None:
        archive = archive_url.rstrip("/").encode()
        public = public_url.rstrip("/").encode()
        self._pairs = [(archive, public)]
        # Also the http:// and 127.0.0.1 spellings an archive may build for itself.
        for variant in _variants(archive):
            if variant != archive:
                self._pairs.append((variant, public))

    def rewrite(self, body: bytes) -> bytes:
        for old, new in self._pairs:
            if old in body:
                body = body.replace(old, new)
        return body

    def mentions_archive(self, body: bytes) -> bool:
        return any(old in body for old, _ in self._pairs)


def _variants(origin: bytes) -> list[bytes]:
    scheme, _, rest = origin.partition(b"://")
    hosts = [rest]
    if rest.startswith(b"localhost"):
        hosts.append(b"127.0.0.1" + rest[len(b"localhost") :])
    elif rest.startswith(b"127.0.0.1"):
        hosts.append(b"localhost" + rest[len(b"127.0.0.1") :])
    del scheme
    return [s + b"://" + h for s in (b"https", b"http") for h in hosts]


def study_of(item: dict[str, Any]) -> str | None:
    return dicomjson.first(item, _STUDY_UID)


async def filter_qido(
    results: list[dict[str, Any]],
    query: QidoQuery,
    permitted: Callable[[set[str]], Awaitable[set[str]]],
    drop_study_uid: bool,
) -> tuple[list[dict[str, Any]], int]:
    """Keep permitted results, then paginate (PS3.18 8.3.4.4) over what is left: (the page,
    how many permitted results match). The archive adapter answered exact matches only."""
    uids = {uid for uid in map(study_of, results) if uid}
    allowed = await permitted(uids) if uids else set()
    kept = [r for r in results if study_of(r) in allowed]
    start = query.offset
    end = start + query.limit if query.limit is not None else None
    page = kept[start:end]
    if drop_study_uid:
        # The gateway asked for StudyInstanceUID only to filter; the client did not.
        page = [{k: v for k, v in r.items() if k != _STUDY_UID} for r in page]
    return page, len(kept)


def dump_json(results: list[dict[str, Any]]) -> bytes:
    return json.dumps(results, separators=(",", ":")).encode()
