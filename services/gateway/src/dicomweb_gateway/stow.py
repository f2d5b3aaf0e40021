"""STOW-RS request validation (PS3.18 10.5) before anything reaches the archive.

Every part is read strictly (part10.py). Parts that are not one unambiguous DICOM object, lack
UIDs, name another study than the one in a study-specific URL, or carry an executable preamble
(CVE-2019-11687) are refused one by one in the Failed SOP Sequence; the rest are stored (see
storage.py). Parts sent on are canonical re-serializations with a zero preamble.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from .errors import GatewayError, bad_request
from .part10 import Anomaly, read_instance
from .preamble import PREAMBLE, executable_kind, has_file_header

# PS3.18 table 10.5.3-2 / PS3.4 B.2.3 failure reasons.
CANNOT_UNDERSTAND = 0xC000
DATA_SET_DOES_NOT_MATCH = 0xA900  # used for a study UID other than the one in the URL
REFUSED_NOT_AUTHORIZED = 0x0124  # PS3.7 C "Refused: Not Authorized"
# A UID already known elsewhere in the hierarchy, or a PatientID other than the study's (AP-7).
IDENTITY_CONFLICT = DATA_SET_DOES_NOT_MATCH
PROCESSING_FAILURE = 0x0110

_BOUNDARY = re.compile(r'boundary="?([^";,]{1,200})"?', re.IGNORECASE)
_TYPE = re.compile(r'type="?([^";,]+)"?', re.IGNORECASE)
_MAX_PARTS = 10000


def payload_too_large(detail: str) -> GatewayError:
    return GatewayError(413, "payload_too_large", "request body too large", detail)


def unsupported_media_type(detail: str) -> GatewayError:
    return GatewayError(415, "unsupported_media_type", "unsupported media type", detail)


@dataclass
class Part:
    data: bytes
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient_id: str | None = None
    failure: int | None = None
    reason: str = ""
    attributes: dict[str, str] = field(default_factory=dict)  # for the study index


@dataclass
class StowRequest:
    parts: list[Part]
    alerts: list[tuple[str, str]] = field(default_factory=list)

    @property
    def accepted(self) -> list[Part]:
        return [p for p in self.parts if p.failure is None]


def boundary_of(content_type: str) -> bytes:
    """PS3.18 10.5.1.2: multipart/related; type="application/dicom"; boundary=..."""
    lowered = content_type.lower()
    if not lowered.startswith("multipart/related"):
        raise unsupported_media_type(f"content type {content_type[:100]!r}")
    kind = _TYPE.search(content_type)
    if kind and kind.group(1).lower() != "application/dicom":
        raise unsupported_media_type(f"part type {kind.group(1)[:100]!r}")
    match = _BOUNDARY.search(content_type)
    if not match:
        raise bad_request("invalid_multipart", "malformed multipart body", "no boundary")
    return match.group(1).encode("ascii", "replace")


def split_multipart(body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    """RFC 2046 5.1.1: parts between `--boundary` lines; CRLF before a delimiter belongs to it."""
    delimiter = b"--" + boundary
    if body.startswith(delimiter):
        body = b"\r\n" + body
    pieces = body.split(b"\r\n" + delimiter)
    if len(pieces) < 3 and not (len(pieces) == 2 and pieces[1].startswith(b"--")):
        raise bad_request("invalid_multipart", "malformed multipart body", "no parts")
    parts: list[tuple[dict[str, str], bytes]] = []
    closed = False
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            closed = True
            break
        if len(parts) >= _MAX_PARTS:
            raise bad_request("invalid_multipart", "malformed multipart body", "too many parts")
        head, sep, data = piece.partition(b"\r\n\r\n")
        if not sep:
            raise bad_request("invalid_multipart", "malformed multipart body", "part headers")
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if colon:
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        parts.append((headers, data))
    if not closed:
        raise bad_request("invalid_multipart", "malformed multipart body", "no close delimiter")
    return parts


def _fail(part: Part, code: int, reason: str) -> Part:
    part.failure = code
    part.reason = reason
    return part


def validate_part(
    headers: dict[str, str],
    data: bytes,
    index: int,
    study_in_url: str | None,
    zero: bool,
    alerts: list[tuple[str, str]],
) -> Part:
    """Check one part; an accepted part carries the canonical re-serialization (part10.py)."""
    part = Part(data)
    content_type = headers.get("content-type", "application/dicom").split(";")[0].strip()
    if content_type.lower() != "application/dicom":
        return _fail(part, CANNOT_UNDERSTAND, f"part {index}: content type {content_type!r}")
    if not has_file_header(data):
        return _fail(part, CANNOT_UNDERSTAND, f"part {index}: no PS3.10 file header")
    kind = executable_kind(data[:PREAMBLE])
    if kind is not None:
        alerts.append(("preamble", f"{kind} header in the preamble of part {index}"))
        if not zero:
            _fail(part, CANNOT_UNDERSTAND, f"part {index}: {kind} preamble refused")
    try:
        instance = read_instance(data)
    except Anomaly as exc:
        alerts.append(("malformed-dicom", f"part {index}: {exc}"))
        return _fail(part, CANNOT_UNDERSTAND, f"part {index}: {exc}")
    part.sop_class_uid = instance.sop_class_uid
    part.sop_instance_uid = instance.sop_instance_uid
    part.study_instance_uid = instance.study_instance_uid
    part.series_instance_uid = instance.series_instance_uid
    part.patient_id = instance.patient_id
    part.attributes = instance.attributes
    if part.failure is not None:
        return part
    if study_in_url is not None and part.study_instance_uid != study_in_url:
        return _fail(part, DATA_SET_DOES_NOT_MATCH, f"part {index}: study UID differs from URL")
    # What the archive gets: pydicom's re-serialization of what was parsed, zero preamble.
    part.data = instance.canonical
    return part


def parse_stow(
    content_type: str, body: bytes, study_in_url: str | None, zero_preamble: bool
) -> StowRequest:
    boundary = boundary_of(content_type)
    request = StowRequest([])
    for index, (headers, data) in enumerate(split_multipart(body, boundary), start=1):
        request.parts.append(
            validate_part(headers, data, index, study_in_url, zero_preamble, request.alerts)
        )
    return request


def encode_multipart(parts: list[Part]) -> tuple[bytes, bytes]:
    """(boundary, body) for the archive: a fresh random boundary that no part contains.

    A fixed or guessable boundary lets a client put it inside a part's bytes, and the archive
    then splits that part into parts nobody authorized (AP-7). 32 random bytes cannot be
    guessed; the check below makes a collision impossible rather than improbable.
    """
    while True:
        boundary = b"zt-" + secrets.token_hex(32).encode()
        if not any(boundary in part.data for part in parts):
            break
    out = bytearray()
    for part in parts:
        out += b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
        out += part.data + b"\r\n"
    out += b"--" + boundary + b"--\r\n"
    return boundary, bytes(out)


def failed_sop_item(part: Part) -> dict[str, object]:
    """One item of the Failed SOP Sequence (0008,1198), PS3.18 table 10.5.3-2."""
    item: dict[str, object] = {"00081197": {"vr": "US", "Value": [part.failure]}}
    if part.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [part.sop_class_uid]}
    if part.sop_instance_uid:
        item["00081155"] = {"vr": "UI", "Value": [part.sop_instance_uid]}
    return item


def merge_response(archive: dict[str, object] | None, refused: list[Part]) -> dict[str, object]:
    """Add the gateway's refusals to the archive's store response."""
    response: dict[str, object] = dict(archive or {})
    if refused:
        failed = response.get("00081198")
        items: list[object] = []
        if isinstance(failed, dict) and isinstance(failed.get("Value"), list):
            items = list(failed["Value"])
        items.extend(failed_sop_item(p) for p in refused)
        response["00081198"] = {"vr": "SQ", "Value": items}
    return response


def store_status(response: dict[str, object]) -> int:
    """PS3.18 10.5.3: 200 all stored, 202 some failed, 409 none stored."""

    def count(tag: str) -> int:
        element = response.get(tag)
        if isinstance(element, dict) and isinstance(element.get("Value"), list):
            return len(element["Value"])
        return 0

    stored, failed = count("00081199"), count("00081198")
    if failed == 0:
        return 200
    return 202 if stored else 409
