"""Forward a request to the archive and stream the answer back (STYLE rule 7).

Only allow-listed request headers cross to the archive, so client identity (Authorization,
DPoP, Cookie), forwarding (Forwarded, X-Forwarded-*, Via) and hop-by-hop headers are dropped
before the adapter adds its own credentials and `Forwarded` header. Archive errors become the
gateway's own typed errors: no archive body, product or host ever leaves (AP-6).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from .errors import GatewayError, bad_request, not_found
from .preamble import zero_multipart, zero_single
from .rewrite import response_headers

# Request headers a DICOMweb client legitimately sends that the archive needs to see.
REQUEST_HEADERS = frozenset({"accept", "content-type"})
_MAX_ACCEPT = 1024


def request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in REQUEST_HEADERS:
        value = headers.get(name)
        if value is not None:
            if len(value) > _MAX_ACCEPT or not value.isascii():
                raise bad_request("invalid_header", "malformed header", f"{name} too long")
            out[name] = value
    return out


def archive_error(status: int, what: str) -> GatewayError:
    """Map an archive failure status onto a gateway error with public text only."""
    if status == 404:
        return not_found(f"archive 404 for {what}")
    if status == 406:
        return GatewayError(406, "not_acceptable", "not acceptable", f"archive 406 for {what}")
    if status == 415:
        return GatewayError(415, "unsupported_media_type", "unsupported media type", what)
    if status in (400, 422):
        return bad_request("invalid_request", "request refused", f"archive {status} for {what}")
    if status == 413:
        return GatewayError(413, "payload_too_large", "request body too large", what)
    if status in (503, 502):
        return GatewayError(
            503,
            "unavailable",
            "service temporarily unavailable",
            f"archive {status} for {what}",
            {"Retry-After": "5"},
        )
    if status == 504:
        return GatewayError(504, "archive_timeout", "upstream timeout", what)
    return GatewayError(502, "archive_error", "upstream error", f"archive {status} for {what}")


def _boundary(content_type: str) -> bytes | None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip('"').encode("ascii", "replace")
    return None


def _dicom_content(content_type: str) -> str | None:
    """'multipart' / 'single' when the body carries application/dicom files, else None."""
    lowered = content_type.lower()
    if (
        lowered.startswith("multipart/related")
        and "application/dicom" in lowered
        and ("application/dicom+" not in lowered)
    ):
        return "multipart"
    if lowered.startswith("application/dicom") and not lowered.startswith("application/dicom+"):
        return "single"
    return None


async def stream_response(upstream: httpx.Response, head_only: bool = False) -> Response:
    """Stream an archive answer to the client, zeroing file preambles on the way (AP-5)."""
    content_type = upstream.headers.get("content-type", "application/octet-stream")
    kind = _dicom_content(content_type)
    headers = response_headers(upstream.headers.items(), keep_length=True)
    body: AsyncIterator[bytes] = upstream.aiter_bytes()
    if kind == "multipart":
        boundary = _boundary(content_type)
        if boundary:
            body = zero_multipart(body, boundary)
    elif kind == "single":
        body = zero_single(body)
    if head_only:
        await upstream.aclose()
        return Response(b"", status_code=upstream.status_code, headers=headers)
    return StreamingResponse(
        body,
        status_code=upstream.status_code,
        headers=headers,
        background=BackgroundTask(upstream.aclose),
    )
