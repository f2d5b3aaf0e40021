"""Strict reading of DICOM files (PS3.10) and their canonical re-serialization (AP-7).

Two parsers reading one file differently is how an attacker gets an instance into a study the
gateway never authorized: pydicom keeps the last of two (0020,000D) elements, DCMTK (the
archive) keeps the first. So a file is accepted only when its element stream is unambiguous,
and what goes to the archive is pydicom's own re-serialization of what the gateway parsed and
authorized, never the client's bytes.

`check_structure` walks the raw element stream. It is written by hand because no library
reports this: pydicom's reader collapses repeated tags into a dict (keeping the last) and DCMTK
logs "found twice" and keeps the first; neither exposes the raw order through its API. It
refuses, at every nesting level: a tag not strictly greater than the one before it (duplicates
and out-of-order elements), an unknown or implicit-switching VR in an explicit-VR stream, a
length that overruns its container or is odd, trailing bytes, undefined lengths anywhere but
sequences, sequence items and encapsulated pixel data, nesting deeper than `MAX_DEPTH`, file
meta elements outside group 0002 or dataset elements inside it, and the identifying elements
(`IDENTIFYING`) encoded with another VR than the data dictionary's.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from dataclasses import dataclass, field

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from .parse import is_uid

log = logging.getLogger(__name__)

PREAMBLE = 128
MAX_DEPTH = 12
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
# PS3.5 table 7.1-1: VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_SHORT_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH",
     "SL", "SS", "ST", "TM", "UI", "UL", "US"}
)  # fmt: skip
# The elements authorization and the archive's hierarchy depend on (PS3.3 C.12.1, C.7.*).
IDENTIFYING = {
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00100020: ("PatientID", "LO"),
}


class Anomaly(ValueError):
    """The file is not one unambiguous PS3.10 object; the message says where."""


@dataclass(frozen=True)
class Instance:
    """What the gateway authorizes, and the exact bytes the archive will be given."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    canonical: bytes
    # Study-level attributes for the study index (index_attributes); never authorized on.
    attributes: dict[str, str] = field(default_factory=dict)


def read_instance(data: bytes) -> Instance:
    """Parse strictly, re-serialize canonically, and prove the result reads back the same.

    pydicom warns (rather than fails) on values it had to guess at; here any such warning is an
    anomaly, since a guess is where two parsers part ways.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return _read_instance(data)
        except Warning as warning:
            raise Anomaly(f"pydicom: {str(warning)[:200]}") from None


def _read_instance(data: bytes) -> Instance:
    if len(data) < PREAMBLE + 4 or data[PREAMBLE : PREAMBLE + 4] != b"DICM":
        raise Anomaly("no PS3.10 file header")
    transfer_syntax, dataset_start = check_meta(data)
    body = data[dataset_start:]
    if transfer_syntax == ExplicitVRBigEndian:
        raise Anomaly("big endian transfer syntax (retired) is not accepted")
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        try:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            body = inflater.decompress(body, 1 << 30)
        except zlib.error as exc:
            raise Anomaly(f"deflated dataset: {exc}") from None
        if inflater.unconsumed_tail:
            raise Anomaly("deflated dataset too large")
    check_structure(body, implicit=transfer_syntax == ImplicitVRLittleEndian)
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError, TypeError) as exc:
        raise Anomaly(f"not parseable DICOM: {exc.__class__.__name__}") from None
    keys = identity_of(ds)
    meta_sop = ds.file_meta.get("MediaStorageSOPInstanceUID")
    meta_class = ds.file_meta.get("MediaStorageSOPClassUID")
    if meta_sop is not None and str(meta_sop) != keys["SOPInstanceUID"]:
        raise Anomaly("file meta SOP Instance UID differs from the dataset's")
    if meta_class is not None and str(meta_class) != keys["SOPClassUID"]:
        raise Anomaly("file meta SOP Class UID differs from the dataset's")
    ds.preamble = bytes(PREAMBLE)
    out = io.BytesIO()
    try:
        ds.save_as(out, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, struct.error) as exc:
        raise Anomaly(f"cannot re-serialize: {exc.__class__.__name__}") from None
    canonical = out.getvalue()
    # What the archive gets must read back to exactly what was authorized.
    again = identity_of(pydicom.dcmread(io.BytesIO(canonical)))
    if again != keys:
        raise Anomaly("re-serialized file reads differently")
    return Instance(
        keys["SOPClassUID"],
        keys["SOPInstanceUID"],
        keys["StudyInstanceUID"],
        keys["SeriesInstanceUID"],
        keys["PatientID"],
        canonical,
        index_attributes(ds),
    )


# What the study index keeps of a stored instance (docs/policy.md, "Study index").
INDEX_KEYWORDS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientName",
    "StudyID",
    "StudyDescription",
    "Modality",
)


def index_attributes(ds: pydicom.Dataset) -> dict[str, str]:
    """Best effort: a value pydicom cannot read is left out (it never refuses the instance)."""
    out: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword in INDEX_KEYWORDS:
            try:
                value = ds.get(keyword)
                if value is not None:
                    multi = isinstance(value, MultiValue)
                    out[keyword] = ("\\".join(map(str, value)) if multi else str(value)).strip(
                        " \0"
                    )
            except Exception as exc:  # a malformed value: not indexed, the archive has it
                log.debug("index attribute %s unreadable: %r", keyword, exc)
    return out


def identity_of(ds: pydicom.Dataset) -> dict[str, str]:
    """The identifying values, each present once, single-valued and well formed."""
    keys: dict[str, str] = {}
    for keyword, vr in IDENTIFYING.values():
        element = ds.get(keyword)
        if element is None and keyword == "PatientID":
            keys[keyword] = ""
            continue
        if element is None:
            raise Anomaly(f"{keyword} missing")
        if isinstance(element, MultiValue | list):
            raise Anomaly(f"{keyword} has several values")
        text = str(element)
        if vr == "UI":
            # PS3.5 9.1: a UID is padded with one trailing NUL to an even length; nothing else.
            text = text.removesuffix("\0")
            if not is_uid(text):
                raise Anomaly(f"{keyword} is not a valid UID")
        else:
            # PS3.5 6.2 LO: leading and trailing spaces are not significant.
            text = text.strip(" ")
            if any(ord(c) < 0x20 or c == "\\" for c in text):
                raise Anomaly(f"{keyword} holds control characters or a value separator")
        keys[keyword] = text
    return keys


def check_meta(data: bytes) -> tuple[str, int]:
    """Walk the file meta group (always explicit VR little endian, PS3.10 7.1).

    Returns the transfer syntax UID and the offset where the dataset starts.
    """
    pos = PREAMBLE + 4
    previous = -1
    transfer_syntax: str | None = None
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        tag = group << 16 | element
        if tag <= previous:
            raise Anomaly(f"file meta element ({group:04X},{element:04X}) repeated or out of order")
        previous = tag
        _vr, length, header = _explicit_header(data, pos)
        if length == _UNDEFINED:
            raise Anomaly("undefined length in the file meta group")
        end = pos + header + length
        if end > len(data) or length % 2:
            raise Anomaly(f"file meta element ({group:04X},{element:04X}) has a bad length")
        if tag == 0x00020010:
            transfer_syntax = data[pos + header : end].rstrip(b"\0 ").decode("ascii", "replace")
        pos = end
    if transfer_syntax is None or not is_uid(transfer_syntax):
        raise Anomaly("file meta has no valid Transfer Syntax UID")
    return transfer_syntax, pos


def check_structure(body: bytes, implicit: bool) -> None:
    """Walk a whole dataset; raise `Anomaly` at the first ambiguity."""
    end = _walk(body, 0, len(body), implicit, 0, in_undefined_item=False)
    if end != len(body):
        raise Anomaly("trailing bytes after the dataset")


def _explicit_header(buf: bytes, pos: int) -> tuple[str, int, int]:
    """(VR, length, header size) of an explicit-VR element at `pos`."""
    raw_vr = buf[pos + 4 : pos + 6]
    vr = raw_vr.decode("ascii", "replace")
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise Anomaly("truncated element header")
        if buf[pos + 6 : pos + 8] != b"\0\0":
            raise Anomaly("reserved bytes of a long-VR element are not zero")
        return vr, struct.unpack_from("<I", buf, pos + 8)[0], 12
    if vr in _SHORT_VRS:
        return vr, struct.unpack_from("<H", buf, pos + 6)[0], 8
    raise Anomaly(f"unknown VR {raw_vr!r} in an explicit VR stream")


def _walk(
    buf: bytes, pos: int, end: int, implicit: bool, depth: int, in_undefined_item: bool
) -> int:
    """Walk elements from `pos` to `end` (or an item delimiter); return where it stopped."""
    if depth > MAX_DEPTH:
        raise Anomaly("sequences nested too deeply")
    previous = -1
    while pos < end:
        if pos + 8 > end:
            raise Anomaly("truncated element header")
        group, element = struct.unpack_from("<HH", buf, pos)
        tag = group << 16 | element
        if tag == _ITEM_END:
            if not in_undefined_item or struct.unpack_from("<I", buf, pos + 4)[0] != 0:
                raise Anomaly("stray item delimiter")
            return pos + 8
        if group == 0xFFFE:
            raise Anomaly(f"item tag ({group:04X},{element:04X}) outside a sequence")
        if group == 0x0002:
            raise Anomaly("file meta element inside the dataset")
        if tag <= previous:
            raise Anomaly(f"element ({group:04X},{element:04X}) repeated or out of order")
        previous = tag
        if implicit:
            vr, length, header = _implicit_vr(tag), struct.unpack_from("<I", buf, pos + 4)[0], 8
        else:
            vr, length, header = _explicit_header(buf, pos)
            expected = IDENTIFYING.get(tag)
            if expected is not None and vr != expected[1]:
                raise Anomaly(f"{expected[0]} encoded as {vr}")
        value = pos + header
        if length == _UNDEFINED:
            if vr == "SQ" or (vr == "UN" and not implicit) or (implicit and vr is None):
                pos = _sequence(buf, value, end, implicit, depth + 1)
            elif tag == _PIXEL_DATA:
                pos = _fragments(buf, value, end)
            else:
                raise Anomaly(f"undefined length on ({group:04X},{element:04X})")
            continue
        if length % 2:
            raise Anomaly(f"odd length on ({group:04X},{element:04X})")
        if value + length > end:
            raise Anomaly(f"element ({group:04X},{element:04X}) overruns its container")
        if vr == "SQ":
            _sequence(buf, value, value + length, implicit, depth + 1, defined=True)
        pos = value + length
    if in_undefined_item:
        raise Anomaly("item without its delimiter")
    return pos


def _implicit_vr(tag: int) -> str | None:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None  # private or unknown: a sequence only if its length is undefined
    return "SQ" if vr == "SQ" else vr


def _sequence(
    buf: bytes, pos: int, end: int, implicit: bool, depth: int, defined: bool = False
) -> int:
    """Walk the items of a sequence; an undefined-length one ends with its delimiter."""
    while pos < end:
        if pos + 8 > end:
            raise Anomaly("truncated item header")
        tag = struct.unpack_from("<I", buf, pos)[0]
        tag = (tag & 0xFFFF) << 16 | tag >> 16  # (group, element) as stored little endian
        length = struct.unpack_from("<I", buf, pos + 4)[0]
        if tag == _SEQUENCE_END:
            if defined or length != 0:
                raise Anomaly("stray sequence delimiter")
            return pos + 8
        if tag != _ITEM:
            raise Anomaly("a sequence holds something other than items")
        if length == _UNDEFINED:
            pos = _walk(buf, pos + 8, end, implicit, depth, in_undefined_item=True)
        else:
            if length % 2 or pos + 8 + length > end:
                raise Anomaly("item overruns its sequence")
            if _walk(buf, pos + 8, pos + 8 + length, implicit, depth, False) != pos + 8 + length:
                raise Anomaly("item length disagrees with its content")
            pos += 8 + length
    if not defined:
        raise Anomaly("sequence without its delimiter")
    return pos


def _fragments(buf: bytes, pos: int, end: int) -> int:
    """Encapsulated pixel data (PS3.5 A.4): items of opaque fragments, then a delimiter."""
    while pos + 8 <= end:
        tag = struct.unpack_from("<I", buf, pos)[0]
        tag = (tag & 0xFFFF) << 16 | tag >> 16
        length = struct.unpack_from("<I", buf, pos + 4)[0]
        if tag == _SEQUENCE_END:
            if length != 0:
                raise Anomaly("bad pixel data delimiter")
            return pos + 8
        if tag != _ITEM or length == _UNDEFINED or pos + 8 + length > end:
            raise Anomaly("malformed encapsulated pixel data")
        pos += 8 + length
    raise Anomaly("encapsulated pixel data without its delimiter")
