"""Parse a request path and query into an immutable DICOMweb resource (PS3.18).

This is the route allow-list: a path that is not one of the PS3.18 resources below is 404, a
known resource with the wrong method is 405, a malformed UID or query is 400. QIDO keys are
allow-listed by keyword or tag and re-encoded canonically, because Orthanc 1.10 does not
percent-decode query arguments (an encoded key would be dropped silently and widen the search).
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass, replace
from urllib.parse import unquote_to_bytes

from .context import Action
from .errors import GatewayError, bad_request, not_found

DICOMWEB_PREFIX = "/dicom-web"
WADO_URI_PATH = "/wado"

# PS3.5 9.1: components of digits, no leading zero unless the component is "0", max 64 chars.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# Frame lists (PS3.18 8.3.1.1): 1-based positive integers separated by commas.
_FRAMES = re.compile(r"^[1-9][0-9]{0,6}(,[1-9][0-9]{0,6})*$")
# Orthanc bulk data URIs: .../bulk/<tag>[/<index>/<tag>...] (hex tags, sequence item indexes).
_BULK = re.compile(r"^[0-9A-Fa-f]{8}(/[0-9]{1,6}/[0-9A-Fa-f]{8})*$")


def is_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and _UID.match(value) is not None


class Transaction(enum.StrEnum):
    """PS3.18 transaction names (section 10), used for routing and audit."""

    SEARCH_FOR_STUDIES = "search_for_studies"
    SEARCH_FOR_SERIES = "search_for_series"
    SEARCH_FOR_INSTANCES = "search_for_instances"
    RETRIEVE_STUDY = "retrieve_study"
    RETRIEVE_SERIES = "retrieve_series"
    RETRIEVE_INSTANCE = "retrieve_instance"
    RETRIEVE_FRAMES = "retrieve_frames"
    RETRIEVE_BULKDATA = "retrieve_bulkdata"
    RETRIEVE_STUDY_METADATA = "retrieve_study_metadata"
    RETRIEVE_SERIES_METADATA = "retrieve_series_metadata"
    RETRIEVE_INSTANCE_METADATA = "retrieve_instance_metadata"
    RETRIEVE_RENDERED_STUDY = "retrieve_rendered_study"
    RETRIEVE_RENDERED_SERIES = "retrieve_rendered_series"
    RETRIEVE_RENDERED_INSTANCE = "retrieve_rendered_instance"
    RETRIEVE_RENDERED_FRAMES = "retrieve_rendered_frames"
    RETRIEVE_STUDY_THUMBNAIL = "retrieve_study_thumbnail"
    RETRIEVE_SERIES_THUMBNAIL = "retrieve_series_thumbnail"
    RETRIEVE_INSTANCE_THUMBNAIL = "retrieve_instance_thumbnail"
    STORE_INSTANCES = "store_instances"
    DELETE_STUDY = "delete_study"
    DELETE_SERIES = "delete_series"
    RETRIEVE_WADO_URI = "retrieve_wado_uri"  # PS3.18 9: URI service


SEARCHES = frozenset(
    {
        Transaction.SEARCH_FOR_STUDIES,
        Transaction.SEARCH_FOR_SERIES,
        Transaction.SEARCH_FOR_INSTANCES,
    }
)
METADATA = frozenset(
    {
        Transaction.RETRIEVE_STUDY_METADATA,
        Transaction.RETRIEVE_SERIES_METADATA,
        Transaction.RETRIEVE_INSTANCE_METADATA,
    }
)
THUMBNAILS = frozenset(
    {
        Transaction.RETRIEVE_STUDY_THUMBNAIL,
        Transaction.RETRIEVE_SERIES_THUMBNAIL,
        Transaction.RETRIEVE_INSTANCE_THUMBNAIL,
    }
)


def action_of(transaction: Transaction) -> Action:
    if transaction in SEARCHES:
        return Action.SEARCH
    if transaction is Transaction.STORE_INSTANCES:
        return Action.STORE
    if transaction in (Transaction.DELETE_STUDY, Transaction.DELETE_SERIES):
        return Action.DELETE
    return Action.READ


# QIDO matching and return keys (PS3.18 table 10.6.1-5, plus common descriptive attributes).
# keyword -> tag; both spellings are accepted, the keyword is what Orthanc receives.
QIDO_KEYS: dict[str, str] = {
    "StudyDate": "00080020",
    "StudyTime": "00080030",
    "AccessionNumber": "00080050",
    "ModalitiesInStudy": "00080061",
    "ReferringPhysicianName": "00080090",
    "StudyDescription": "00081030",
    "PatientName": "00100010",
    "PatientID": "00100020",
    "PatientBirthDate": "00100030",
    "PatientSex": "00100040",
    "StudyInstanceUID": "0020000D",
    "StudyID": "00200010",
    "NumberOfStudyRelatedSeries": "00201206",
    "NumberOfStudyRelatedInstances": "00201208",
    "Modality": "00080060",
    "SeriesDescription": "0008103E",
    "SeriesInstanceUID": "0020000E",
    "SeriesNumber": "00200011",
    "NumberOfSeriesRelatedInstances": "00201209",
    "PerformedProcedureStepStartDate": "00400244",
    "PerformedProcedureStepStartTime": "00400245",
    "SOPClassUID": "00080016",
    "SOPInstanceUID": "00080018",
    "InstanceNumber": "00200013",
    "Rows": "00280010",
    "Columns": "00280011",
    "NumberOfFrames": "00280008",
    "InstitutionName": "00080080",
    "BodyPartExamined": "00180015",
    # Series date and time: OHIF's study loader asks for them (includefield=00080021,00080031);
    # both are Orthanc main DICOM tags, answered from its index.
    "SeriesDate": "00080021",
    "SeriesTime": "00080031",
}
# Return keys of PS3.18 tables 10.6.3-3/4/5 that are not matching keys: includefield only.
# (RequestAttributeSequence and its items are left out: Orthanc 1.10 cannot match sequences.)
QIDO_RETURN_ONLY: dict[str, str] = {
    "SpecificCharacterSet": "00080005",
    "InstanceAvailability": "00080056",
    "TimezoneOffsetFromUTC": "00080201",
    "RetrieveURL": "00081190",
    "BitsAllocated": "00280100",
}
_RETURN_KEYS = QIDO_KEYS | QIDO_RETURN_ONLY
QIDO_RETURN_TAGS = _RETURN_KEYS  # keyword -> tag of every attribute a QIDO-RS may return
_TAG_TO_KEYWORD = {tag: kw for kw, tag in QIDO_KEYS.items()}
_TAG_TO_RETURN_KEYWORD = {tag: kw for kw, tag in _RETURN_KEYS.items()}
_UID_KEYS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"})
# The attributes of each QIDO level (PS3.18 tables 10.6.1-5 and 10.6.3-3/4/5; PS3.3 modules):
# `includefield=all` expands to the attributes of the searched level and the levels above it,
# never to attributes of a lower level (they would come from one arbitrary instance).
STUDY_LEVEL_KEYS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "StudyDescription",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_LEVEL_KEYS = (
    "Modality",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "InstitutionName",
    "BodyPartExamined",
    "SeriesDate",
    "SeriesTime",
)
INSTANCE_LEVEL_KEYS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
)
LEVEL_KEYS = {
    "study": STUDY_LEVEL_KEYS,
    "series": STUDY_LEVEL_KEYS + SERIES_LEVEL_KEYS,
    "instance": STUDY_LEVEL_KEYS + SERIES_LEVEL_KEYS + INSTANCE_LEVEL_KEYS,
}
# Matching values (issue 14): every character the VRs of the keys allow (PS3.5 6.2: the PN, LO,
# SH, CS, DA, TM, UI repertoires; any Unicode character under Specific Character Set
# ISO_IR 192, which is what PS3.18 8.3.4.1 makes a query: UTF-8), so `O'Brien`, `Smith/Jones`,
# `A&B`, `50%`, `#2`, `(Jr)` and `Müller` are ordinary values. Refused: control and format
# characters, surrogates, private-use and unassigned code points (Unicode categories C*), line
# and paragraph separators, and `\` (the value delimiter of PS3.5 6.4: multiple values are
# written with `,`). How each archive receives them is its adapter's business (archive/).
MAX_VALUE_LENGTH = 256
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_KEY = re.compile(r"^[A-Za-z0-9_.]{1,64}$")
_PARAMS = frozenset({"limit", "offset", "fuzzymatching", "includefield"})


def _keyword(raw_key: str) -> str | None:
    """The keyword of a matching key (keyword or tag spelling), None if not allowed."""
    if raw_key in QIDO_KEYS:
        return raw_key
    return _TAG_TO_KEYWORD.get(raw_key.upper())


def _return_keyword(raw_key: str) -> str | None:
    """The keyword of an includefield value (matching or return-only key)."""
    if raw_key in _RETURN_KEYS:
        return raw_key
    return _TAG_TO_RETURN_KEYWORD.get(raw_key.upper())


@dataclass(frozen=True)
class QidoQuery:
    """A validated QIDO-RS query (PS3.18 8.3.4)."""

    matches: tuple[tuple[str, str], ...] = ()  # (keyword, value), in request order
    includefields: tuple[str, ...] = ()  # keywords
    limit: int | None = None
    offset: int = 0
    fuzzymatching: bool = False
    # True when the gateway's cap, not the client, set `limit` (no `limit`, `limit=0`, or a
    # `limit` above the cap): a cut answer then carries `Warning: 299` (PS3.18 6.7.1.2).
    capped: bool = False

    def values(self, keyword: str) -> list[str]:
        """The UIDs of a list-valued match key (`StudyInstanceUID=1.2,1.3`), in request order."""
        for key, value in self.matches:
            if key == keyword:
                return [v for v in value.split(",") if v]
        return []

    def with_match(self, keyword: str, value: str) -> QidoQuery:
        """The same query with one match key's value replaced."""
        matches = tuple((k, value if k == keyword else v) for k, v in self.matches)
        return replace(self, matches=matches)


def valid_value(value: str) -> bool:
    """A matching value of the allowed repertoire (see `_REFUSED_CATEGORIES`)."""
    if len(value) > MAX_VALUE_LENGTH or "\\" in value:
        return False
    return all(unicodedata.category(c) not in _REFUSED_CATEGORIES for c in value)


def _decode(raw: str) -> str:
    """Percent-decode once, strictly: bad escapes, NUL, non-UTF-8 are all 400."""
    if "%" in raw and re.search(r"%(?![0-9A-Fa-f]{2})", raw):
        raise bad_request("invalid_query", "malformed query", f"bad percent escape in {raw!r}")
    try:
        text = unquote_to_bytes(raw.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("invalid_query", "malformed query", "query is not UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise bad_request("invalid_query", "malformed query", "control character in query")
    return text


def parse_query_string(query: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if not query:
        return pairs
    for item in query.split("&"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise bad_request("invalid_query", "malformed query", f"argument without '=': {item!r}")
        if not _KEY.match(key):
            # Keywords, tags and parameter names are plain ASCII: an encoded key can only be an
            # attempt to slip past a filter that does not decode (Orthanc 1.10 drops it, AP-2).
            raise bad_request("unsupported_key", "unsupported query key", f"key {key[:80]!r}")
        pairs.append((key, _decode(value)))
    return pairs


def parse_qido(query: str, max_limit: int, level: str = "instance") -> QidoQuery:
    """`level`: "study", "series" or "instance", the level searched (for `includefield=all`)."""
    matches: list[tuple[str, str]] = []
    includefields: list[str] = []
    limit: int | None = None
    offset = 0
    fuzzy = False
    seen: set[str] = set()
    for key, value in parse_query_string(query):
        if key in _PARAMS:
            if key != "includefield" and key in seen:
                raise bad_request("invalid_query", "malformed query", f"repeated {key}")
            seen.add(key)
            if key == "limit" or key == "offset":
                if not value.isdigit() or len(value) > 9:
                    raise bad_request("invalid_query", "malformed query", f"bad {key}")
                if key == "limit":
                    limit = int(value)
                else:
                    offset = int(value)
            elif key == "fuzzymatching":
                if value not in ("true", "false"):
                    raise bad_request("invalid_query", "malformed query", "bad fuzzymatching")
                fuzzy = value == "true"
            else:
                for field in value.split(","):
                    if field == "all":
                        includefields.extend(k for k in LEVEL_KEYS[level] if k not in includefields)
                        continue
                    keyword = _return_keyword(field)
                    if keyword is None:
                        raise bad_request(
                            "unsupported_key", "unsupported query key", f"includefield {field!r}"
                        )
                    if keyword not in includefields:
                        includefields.append(keyword)
            continue
        keyword = _keyword(key)
        if keyword is None:
            # Never a wider search (ARCHITECTURE section 3): unknown keys are refused.
            raise bad_request("unsupported_key", "unsupported query key", f"key {key!r}")
        if keyword in seen:
            raise bad_request("invalid_query", "malformed query", f"repeated {keyword}")
        seen.add(keyword)
        if not valid_value(value):
            raise bad_request("invalid_query", "malformed query", f"bad value for {keyword}")
        if keyword in _UID_KEYS and value and not all(is_uid(u) for u in value.split(",")):
            raise bad_request("invalid_uid", "malformed UID", f"{keyword}={value!r}")
        matches.append((keyword, value))
    # AP-3: never more than the cap. `limit=0` means "no limit of mine" (as the archive reads
    # it), so the cap applies, as it does to a larger limit, and a cut answer says so.
    capped = limit is None or limit == 0 or limit > max_limit
    limit = max_limit if capped or limit is None else limit
    return QidoQuery(tuple(matches), tuple(includefields), limit, offset, fuzzy, capped)


@dataclass(frozen=True)
class Resource:
    """An immutable DICOMweb resource: what a request addresses (PS3.18 10)."""

    transaction: Transaction
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    frames: tuple[int, ...] = ()
    bulk_path: str | None = None
    query: QidoQuery | None = None
    raw_query: str = ""  # forwarded for retrievals (validated, re-encoded)

    @property
    def action(self) -> Action:
        return action_of(self.transaction)

    def archive_path(self) -> str:
        """The DICOMweb path of this resource, built from validated parts only."""
        p = ""
        if self.study_instance_uid:
            p += f"/studies/{self.study_instance_uid}"
        if self.series_instance_uid:
            p += f"/series/{self.series_instance_uid}"
        if self.sop_instance_uid:
            p += f"/instances/{self.sop_instance_uid}"
        t = self.transaction
        if t is Transaction.SEARCH_FOR_STUDIES or (
            t is Transaction.STORE_INSTANCES and not self.study_instance_uid
        ):
            return "/studies"
        if t is Transaction.SEARCH_FOR_SERIES:
            return p + "/series"
        if t is Transaction.SEARCH_FOR_INSTANCES:
            return p + "/instances"
        if t in METADATA:
            return p + "/metadata"
        if t is Transaction.RETRIEVE_FRAMES:
            return p + "/frames/" + ",".join(map(str, self.frames))
        if t is Transaction.RETRIEVE_RENDERED_FRAMES:
            return p + "/frames/" + ",".join(map(str, self.frames)) + "/rendered"
        if t in (
            Transaction.RETRIEVE_RENDERED_STUDY,
            Transaction.RETRIEVE_RENDERED_SERIES,
            Transaction.RETRIEVE_RENDERED_INSTANCE,
        ):
            return p + "/rendered"
        if t in THUMBNAILS:
            return p + "/thumbnail"
        if t is Transaction.RETRIEVE_BULKDATA:
            return p + "/bulk/" + (self.bulk_path or "")
        return p


def _leaf_query(leaf: Transaction, query: str) -> str:
    if leaf in THUMBNAILS:
        return _thumbnail_query(query)
    return _retrieve_query(query, rendered=leaf in RENDERED)


def method_not_allowed(allowed: str) -> GatewayError:
    return GatewayError(405, "method_not_allowed", "method not allowed", headers={"Allow": allowed})


_LEVEL = {
    Transaction.SEARCH_FOR_STUDIES: "study",
    Transaction.SEARCH_FOR_SERIES: "series",
    Transaction.SEARCH_FOR_INSTANCES: "instance",
}

# Per-path-shape allowed methods (RFC 9110 15.5.6 needs the Allow header on 405).
_GET = "GET, HEAD"


def _segments(path: str) -> list[str]:
    # The ASGI server already percent-decoded the path. A decoded '/' or '%' inside a segment,
    # or empty/dot segments, mean someone is trying to smuggle a path: 404 (not a route).
    if "//" in path or "%" in path or "\\" in path:
        raise not_found(f"irregular path {path!r}")
    segs = path.strip("/").split("/") if path.strip("/") else []
    if any(s in (".", "..") for s in segs):
        raise not_found(f"dot segment in {path!r}")
    return segs


def _uid(value: str) -> str:
    if not is_uid(value):
        raise bad_request("invalid_uid", "malformed UID", f"{value[:80]!r}")
    return value


def parse_dicomweb(method: str, path: str, query: str, max_limit: int) -> Resource:
    """`path` is relative to /dicom-web; raises 404/405/400 `GatewayError`s."""
    s = _segments(path)
    n = len(s)

    def need(allowed: str) -> None:
        methods = {m.strip() for m in allowed.split(",")}
        if method not in methods:
            raise method_not_allowed(allowed)

    # Searches across the whole archive.
    if n == 1 and s[0] == "studies":
        if method == "POST":
            return Resource(Transaction.STORE_INSTANCES)
        need("GET, HEAD, POST")
        return Resource(Transaction.SEARCH_FOR_STUDIES, query=parse_qido(query, max_limit, "study"))
    if n == 1 and s[0] in ("series", "instances"):
        need(_GET)
        t = Transaction.SEARCH_FOR_SERIES if s[0] == "series" else Transaction.SEARCH_FOR_INSTANCES
        return Resource(t, query=parse_qido(query, max_limit, _LEVEL[t]))
    if n < 2 or s[0] != "studies":
        raise not_found(f"no route {path!r}")

    study = _uid(s[1])
    if n == 2:
        if method == "POST":
            return Resource(Transaction.STORE_INSTANCES, study)
        if method == "DELETE":
            return Resource(Transaction.DELETE_STUDY, study)
        need("GET, HEAD, POST, DELETE")
        return Resource(Transaction.RETRIEVE_STUDY, study, raw_query=_retrieve_query(query))
    if n == 3:
        leaf = {
            "metadata": Transaction.RETRIEVE_STUDY_METADATA,
            "rendered": Transaction.RETRIEVE_RENDERED_STUDY,
            "thumbnail": Transaction.RETRIEVE_STUDY_THUMBNAIL,
        }.get(s[2])
        if s[2] in ("series", "instances"):
            need(_GET)
            t = (
                Transaction.SEARCH_FOR_SERIES
                if s[2] == "series"
                else Transaction.SEARCH_FOR_INSTANCES
            )
            return Resource(t, study, query=parse_qido(query, max_limit, _LEVEL[t]))
        if leaf is None:
            raise not_found(f"no route {path!r}")
        need(_GET)
        return Resource(leaf, study, raw_query=_leaf_query(leaf, query))
    if s[2] != "series":
        raise not_found(f"no route {path!r}")
    series = _uid(s[3])
    if n == 4:
        if method == "DELETE":
            return Resource(Transaction.DELETE_SERIES, study, series)
        need("GET, HEAD, DELETE")
        return Resource(
            Transaction.RETRIEVE_SERIES, study, series, raw_query=_retrieve_query(query)
        )
    if n == 5:
        if s[4] == "instances":
            need(_GET)
            return Resource(
                Transaction.SEARCH_FOR_INSTANCES,
                study,
                series,
                query=parse_qido(query, max_limit, "instance"),
            )
        leaf = {
            "metadata": Transaction.RETRIEVE_SERIES_METADATA,
            "rendered": Transaction.RETRIEVE_RENDERED_SERIES,
            "thumbnail": Transaction.RETRIEVE_SERIES_THUMBNAIL,
        }.get(s[4])
        if leaf is None:
            raise not_found(f"no route {path!r}")
        need(_GET)
        return Resource(leaf, study, series, raw_query=_leaf_query(leaf, query))
    if s[4] != "instances":
        raise not_found(f"no route {path!r}")
    instance = _uid(s[5])
    need(_GET)
    if n == 6:
        return Resource(
            Transaction.RETRIEVE_INSTANCE, study, series, instance, raw_query=_retrieve_query(query)
        )
    if n == 7:
        leaf = {
            "metadata": Transaction.RETRIEVE_INSTANCE_METADATA,
            "rendered": Transaction.RETRIEVE_RENDERED_INSTANCE,
            "thumbnail": Transaction.RETRIEVE_INSTANCE_THUMBNAIL,
        }.get(s[6])
        if leaf is None:
            raise not_found(f"no route {path!r}")
        return Resource(leaf, study, series, instance, raw_query=_leaf_query(leaf, query))
    if s[6] == "frames" and n in (8, 9):
        if not _FRAMES.match(s[7]):
            raise bad_request("invalid_frames", "malformed frame list", s[7][:80])
        frames = tuple(int(f) for f in s[7].split(","))
        if n == 8:
            return Resource(
                Transaction.RETRIEVE_FRAMES,
                study,
                series,
                instance,
                frames,
                raw_query=_retrieve_query(query),
            )
        if s[8] == "rendered":
            return Resource(
                Transaction.RETRIEVE_RENDERED_FRAMES,
                study,
                series,
                instance,
                frames,
                raw_query=_retrieve_query(query, rendered=True),
            )
    if s[6] == "bulk" and n >= 8:
        bulk = "/".join(s[7:])
        if not _BULK.match(bulk):
            raise not_found(f"bad bulk data path {bulk!r}")
        return Resource(
            Transaction.RETRIEVE_BULKDATA, study, series, instance, bulk_path=bulk.upper()
        )
    raise not_found(f"no route {path!r}")


# Retrieve parameters (PS3.18 8.3.5 and 8.3.3.1 for rendered): allow-listed, re-encoded.
_RETRIEVE_PARAMS = {
    "quality": re.compile(r"^(100|[1-9]?[0-9])$"),
    "viewport": re.compile(r"^[0-9]{1,5},[0-9]{1,5}$"),
    "accept": re.compile(r"^[A-Za-z0-9.+/\-;= \"]{1,200}$"),
}
_INT = r"-?[0-9]{1,5}"
_NUMBER = r"-?[0-9]{1,7}(\.[0-9]{1,6})?"
# Rendered resources (PS3.18 8.3.5.1): what the archive implements, checked and re-encoded.
# - viewport=vw,vh or vw,vh,[sx],[sy],[sw],[sh] (source region; sw/sh may be negative: flip);
# - window=center,width,function (PS3.18 Table 8.3.5-1: linear, linear-exact, sigmoid; the
#   VOI LUT Function spellings LINEAR, LINEAR_EXACT, SIGMOID are accepted too), sent to the
#   archive in the lower-case form it reads;
# - iccprofile=no (the archive embeds no ICC profile, so `no` is what it does); any other
#   iccprofile value, and `annotation`, are refused with a clear 400: the archive does not
#   implement them and would ignore them silently (docs/conformance.md).
_RENDERED_PARAMS = {
    "quality": _RETRIEVE_PARAMS["quality"],
    "viewport": re.compile(
        rf"^[1-9][0-9]{{0,4}},[1-9][0-9]{{0,4}}(,({_INT})?,({_INT})?,({_INT})?,({_INT})?)?$"
    ),
    "window": re.compile(rf"^{_NUMBER},{_NUMBER},[A-Za-z_\-]{{1,16}}$"),
    "iccprofile": re.compile(r"^no$"),
    "accept": _RETRIEVE_PARAMS["accept"],
}
WINDOW_FUNCTIONS = {
    "linear": "linear",
    "linear-exact": "linear-exact",
    "sigmoid": "sigmoid",
    "linear_exact": "linear-exact",
}
NOT_IMPLEMENTED = {
    "annotation": "annotation is not implemented by this archive (rendered without it: refused)",
    "iccprofile": "only iccprofile=no is offered (the archive embeds no ICC profile)",
    "window": "window=center,width,function with function linear, linear-exact or sigmoid",
}


def _retrieve_query(query: str, rendered: bool = False) -> str:
    out: list[str] = []
    allowed = _RENDERED_PARAMS if rendered else _RETRIEVE_PARAMS
    for key, value in parse_query_string(query):
        pattern = allowed.get(key)
        if pattern is None or not pattern.match(value):
            reason = NOT_IMPLEMENTED.get(key, "unsupported query parameter") if rendered else None
            raise bad_request(
                "unsupported_parameter", reason or "unsupported query parameter", key[:64]
            )
        if key == "accept":
            continue  # content negotiation happens through the Accept header only
        if key == "window":
            center, width, function = value.split(",")
            canonical = WINDOW_FUNCTIONS.get(function.lower())
            if canonical is None or float(width) < 1:
                raise bad_request("unsupported_parameter", NOT_IMPLEMENTED["window"], key)
            value = f"{center},{width},{canonical}"
        if key == "iccprofile":
            continue  # `no` is what the archive does anyway
        out.append(f"{key}={value}")
    return "&".join(out)


RENDERED = frozenset(
    {
        Transaction.RETRIEVE_RENDERED_STUDY,
        Transaction.RETRIEVE_RENDERED_SERIES,
        Transaction.RETRIEVE_RENDERED_INSTANCE,
        Transaction.RETRIEVE_RENDERED_FRAMES,
    }
)
_THUMBNAIL_PARAMS = {"viewport": _RENDERED_PARAMS["viewport"], "accept": _RETRIEVE_PARAMS["accept"]}


def _thumbnail_query(query: str) -> str:
    """Thumbnails (PS3.18 8.3.5.1.x): `viewport` only (default 128,128)."""
    out: list[str] = []
    for key, value in parse_query_string(query):
        pattern = _THUMBNAIL_PARAMS.get(key)
        if pattern is None or not pattern.match(value):
            raise bad_request("unsupported_parameter", "unsupported query parameter", key[:64])
        if key == "viewport":
            out.append(f"viewport={value}")
    return "&".join(out) or "viewport=128,128"


# WADO-URI (PS3.18 9.1): the keys a client may send; anything else is 400.
_WADO_URI_KEYS = frozenset(
    {
        "requestType",
        "studyUID",
        "seriesUID",
        "objectUID",
        "contentType",
        "transferSyntax",
        "frameNumber",
        "rows",
        "columns",
        "anonymize",
        "charset",
    }
)


def parse_wado_uri(method: str, query: str) -> Resource:
    if method not in ("GET", "HEAD"):
        raise method_not_allowed(_GET)
    args: dict[str, str] = {}
    for key, value in parse_query_string(query):
        if key not in _WADO_URI_KEYS:
            raise bad_request("unsupported_parameter", "unsupported query parameter", key)
        if key in args:
            raise bad_request("invalid_query", "malformed query", f"repeated {key}")
        args[key] = value
    if args.get("requestType") != "WADO":
        raise bad_request("invalid_query", "malformed query", "requestType must be WADO")
    if "anonymize" in args:
        raise bad_request("unsupported_parameter", "unsupported query parameter", "anonymize")
    uids = [args.get("studyUID", ""), args.get("seriesUID", ""), args.get("objectUID", "")]
    for uid in uids:
        _uid(uid)
    for key in ("contentType", "transferSyntax", "charset"):
        if key in args and not re.match(r"^[A-Za-z0-9.+/\-;=*, ]{1,200}$", args[key]):
            raise bad_request("invalid_query", "malformed query", f"bad {key}")
    for key in ("frameNumber", "rows", "columns"):
        if key in args and not re.match(r"^[1-9][0-9]{0,5}$", args[key]):
            raise bad_request("invalid_query", "malformed query", f"bad {key}")
    canonical = "&".join(f"{k}={args[k].replace(' ', '%20')}" for k in sorted(args))
    return Resource(Transaction.RETRIEVE_WADO_URI, uids[0], uids[1], uids[2], raw_query=canonical)
