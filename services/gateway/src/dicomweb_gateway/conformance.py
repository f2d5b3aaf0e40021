"""The DICOMweb conformance statement (`docs/conformance.md`), generated from the route table.

`python -m dicomweb_gateway conformance [--output docs/conformance.md]` writes it; the test
`services/gateway/tests/test_conformance_doc.py` fails when the file and this module disagree,
when a PS3.18 transaction of `parse.Transaction` has no row, or when a row's example path is not
routed by `parse.parse_dicomweb` to that transaction and method. The differential suite
(`tests/test_conformance.py`) runs one check per supported (transaction, media type) row.

Every row is one of: supported, refused by design (with the reason), not offered by this
archive (Orthanc 1.10.1 + DICOMweb plugin 1.7).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import GatewayError
from .forward import archive_error
from .parse import (
    INSTANCE_LEVEL_KEYS,
    LEVEL_KEYS,
    MAX_VALUE_LENGTH,
    NOT_IMPLEMENTED,
    QIDO_RETURN_ONLY,
    SERIES_LEVEL_KEYS,
    STUDY_LEVEL_KEYS,
    WINDOW_FUNCTIONS,
    Transaction,
    parse_dicomweb,
    parse_wado_uri,
)
from .settings import Limits

SUPPORTED = "supported"
BY_DESIGN = "refused by design"
NOT_OFFERED = "not offered by this archive"

S, SE, INST = "{study}", "{series}", "{instance}"
JSON = "application/dicom+json"
XML_MULTI = 'multipart/related; type="application/dicom+xml"'
XML = "application/dicom+xml"
DICOM_MULTI = 'multipart/related; type="application/dicom"'
OCTETS_MULTI = 'multipart/related; type="application/octet-stream"'
QIDO_PARAMS = "matching keys, includefield, limit, offset, fuzzymatching"
RENDER_PARAMS = "window, viewport (2 or 6 values), quality, iccprofile=no"


@dataclass(frozen=True)
class Row:
    """One transaction on one resource with one media type."""

    transaction: str  # a parse.Transaction value, or a name for what is not routed
    method: str
    path: str  # relative to /dicom-web, or /wado...
    media: str  # response media type (request media type for STOW, noted)
    params: str
    status: str
    note: str = ""

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.transaction, self.method, self.path, self.media)


def _rows() -> list[Row]:
    t = Transaction
    rows: list[Row] = []
    searches = [
        (t.SEARCH_FOR_STUDIES, "/studies"),
        (t.SEARCH_FOR_SERIES, "/series"),
        (t.SEARCH_FOR_SERIES, f"/studies/{S}/series"),
        (t.SEARCH_FOR_INSTANCES, "/instances"),
        (t.SEARCH_FOR_INSTANCES, f"/studies/{S}/instances"),
        (t.SEARCH_FOR_INSTANCES, f"/studies/{S}/series/{SE}/instances"),
    ]
    for transaction, path in searches:
        rows.append(Row(transaction, "GET", path, JSON, QIDO_PARAMS, SUPPORTED, "default"))
        rows.append(
            Row(
                transaction,
                "GET",
                path,
                XML_MULTI,
                QIDO_PARAMS,
                SUPPORTED,
                "PS3.19 Native DICOM Model, one part per result; also for Accept: " + XML,
            )
        )
    for transaction, path in (
        (t.RETRIEVE_STUDY, f"/studies/{S}"),
        (t.RETRIEVE_SERIES, f"/studies/{S}/series/{SE}"),
        (t.RETRIEVE_INSTANCE, f"/studies/{S}/series/{SE}/instances/{INST}"),
    ):
        rows.append(
            Row(
                transaction,
                "GET",
                path,
                DICOM_MULTI,
                "transfer-syntax (Accept): *, as stored, or one the archive transcodes to",
                SUPPORTED,
                "preambles zeroed (AP-5); a transfer syntax the archive cannot produce: 406",
            )
        )
        rows.append(
            Row(transaction, "GET", path, "application/zip", "", NOT_OFFERED, "406"),
        )
    for transaction, path in (
        (t.RETRIEVE_STUDY_METADATA, f"/studies/{S}/metadata"),
        (t.RETRIEVE_SERIES_METADATA, f"/studies/{S}/series/{SE}/metadata"),
        (t.RETRIEVE_INSTANCE_METADATA, f"/studies/{S}/series/{SE}/instances/{INST}/metadata"),
    ):
        note = "BulkDataURIs rewritten to the gateway (AP-4)"
        rows.append(Row(transaction, "GET", path, JSON, "", SUPPORTED, note))
        rows.append(Row(transaction, "GET", path, XML_MULTI, "", SUPPORTED, note))
    rows.append(
        Row(
            t.RETRIEVE_FRAMES,
            "GET",
            f"/studies/{S}/series/{SE}/instances/{INST}/frames/{{frames}}",
            OCTETS_MULTI,
            "transfer-syntax (Accept)",
            SUPPORTED,
            'type="*/*" is accepted and sent as application/octet-stream',
        )
    )
    rows.append(
        Row(
            t.RETRIEVE_BULKDATA,
            "GET",
            f"/studies/{S}/series/{SE}/instances/{INST}/bulk/{{tag}}",
            OCTETS_MULTI,
            "",
            SUPPORTED,
            "the archive's BulkDataURIs",
        )
    )
    rendered = [
        (t.RETRIEVE_RENDERED_STUDY, f"/studies/{S}/rendered", "a representative instance"),
        (t.RETRIEVE_RENDERED_SERIES, f"/studies/{S}/series/{SE}/rendered", "a representative"),
        (t.RETRIEVE_RENDERED_INSTANCE, f"/studies/{S}/series/{SE}/instances/{INST}/rendered", ""),
        (
            t.RETRIEVE_RENDERED_FRAMES,
            f"/studies/{S}/series/{SE}/instances/{INST}/frames/{{frames}}/rendered",
            "",
        ),
    ]
    for transaction, path, note in rendered:
        for media in ("image/jpeg", "image/png"):
            rows.append(Row(transaction, "GET", path, media, RENDER_PARAMS, SUPPORTED, note))
        rows.append(
            Row(transaction, "GET", path, "image/gif, image/jp2, video/*", "", NOT_OFFERED, "406")
        )
    for transaction, path in (
        (t.RETRIEVE_STUDY_THUMBNAIL, f"/studies/{S}/thumbnail"),
        (t.RETRIEVE_SERIES_THUMBNAIL, f"/studies/{S}/series/{SE}/thumbnail"),
        (t.RETRIEVE_INSTANCE_THUMBNAIL, f"/studies/{S}/series/{SE}/instances/{INST}/thumbnail"),
    ):
        rows.append(
            Row(
                transaction,
                "GET",
                path,
                "image/jpeg",
                "viewport (default 128,128)",
                SUPPORTED,
                "the archive's rendering of the resource (a representative instance)",
            )
        )
    for path in ("/studies", f"/studies/{S}"):
        for media in (JSON, XML):
            rows.append(
                Row(
                    t.STORE_INSTANCES,
                    "POST",
                    path,
                    media,
                    f"request: {DICOM_MULTI}",
                    SUPPORTED,
                    "response media type; 200 all stored, 202 some, 409 none",
                )
            )
        rows.append(
            Row(
                t.STORE_INSTANCES,
                "POST",
                path,
                'request: multipart/related; type="application/dicom+json" or +xml with bulk data',
                "",
                BY_DESIGN,
                "415: every stored object is a PS3.10 file the gateway parses whole before "
                "the archive sees it (preamble control AP-5, ingest integrity AP-7)",
            )
        )
    rows.append(
        Row(
            t.DELETE_STUDY,
            "DELETE",
            f"/studies/{S}",
            "(no body)",
            "",
            SUPPORTED,
            "204; a gateway extension (not in PS3.18); step-up and policy apply; legal hold: 403",
        )
    )
    rows.append(
        Row(
            t.DELETE_SERIES,
            "DELETE",
            f"/studies/{S}/series/{SE}",
            "(no body)",
            "",
            SUPPORTED,
            "204; as above",
        )
    )
    wado = "/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={instance}"
    rows.append(
        Row(
            t.RETRIEVE_WADO_URI,
            "GET",
            wado,
            "application/dicom",
            "contentType, transferSyntax, frameNumber, rows, columns, charset",
            SUPPORTED,
            "PS3.18 9; preamble zeroed; values percent-decoded (the archive reads %2F literally)",
        )
    )
    rows.append(
        Row(
            t.RETRIEVE_WADO_URI,
            "GET",
            wado,
            "image/png",
            "contentType=image/png, rows, columns, frameNumber",
            SUPPORTED,
            "also the answer without contentType",
        )
    )
    rows.append(
        Row(
            t.RETRIEVE_WADO_URI,
            "GET",
            wado,
            "image/jpeg",
            "contentType=image/jpeg",
            NOT_OFFERED,
            "the archive answers image/png (labelled so); use WADO-RS rendered for JPEG",
        )
    )
    rows.append(
        Row(
            "wado_uri_anonymize",
            "GET",
            "/wado?...&anonymize=yes",
            "",
            "",
            BY_DESIGN,
            "400: de-identification is a policy grant (DA-1), not a parameter",
        )
    )
    for name, path, status, note in (
        (
            "capabilities",
            "/ (OPTIONS)",
            NOT_OFFERED,
            "405/404: the archive publishes no PS3.18 capabilities",
        ),
        ("ups_rs", "/workitems", NOT_OFFERED, "404: no worklist service"),
        (
            "archive_native",
            "/tools, /instances, /system, /plugins, ...",
            BY_DESIGN,
            "404: only the PS3.18 resources above are routed (AP-2)",
        ),
    ):
        rows.append(Row(name, "*", path, "", "", status, note))
    return rows


ROWS = _rows()

# Example UIDs that make each templated path concrete (the doc test routes them).
EXAMPLE = {
    "study": "1.2.3",
    "series": "1.2.3.4",
    "instance": "1.2.3.4.5",
    "frames": "1",
    "tag": "7FE00010",
}


def concrete(path: str) -> str:
    return path.format(**EXAMPLE)


def route_of(row: Row) -> Transaction | None:
    """The transaction parse.py routes this row's example to (None: not a routed row)."""
    if row.method not in ("GET", "POST", "DELETE"):
        return None
    path = concrete(row.path)
    if path.startswith("/wado?"):
        if "..." in path:
            return None
        return parse_wado_uri(row.method, path.partition("?")[2]).transaction
    try:
        return parse_dicomweb(row.method, path, "", 100).transaction
    except GatewayError:
        return None


def supported(rows: Iterable[Row] = ROWS) -> list[Row]:
    return [r for r in rows if r.status == SUPPORTED]


# ---------------------------------------------------------------- rendering


def _table(header: list[str], body: Iterable[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    return lines


ERROR_ROWS = [
    ("400", "invalid_query, unsupported_key, unsupported_parameter, invalid_uid, ...", "malformed request; unknown QIDO key; a rendering parameter the archive does not implement"),  # noqa: E501
    ("401", "invalid_token, invalid_dpop_proof, insufficient_user_authentication", "no or bad credentials, step-up needed (RFC 6750, 9449, 9470)"),  # noqa: E501
    ("403", "insufficient_scope", "the policy refuses, or the study is unknown: the same answer, so existence is never disclosed"),  # noqa: E501
    ("404", "not_found", "no such route; an object not in the study its path names"),
    ("405", "method_not_allowed", "with Allow"),
    ("406", "not_acceptable", "a media type or transfer syntax the archive cannot produce"),
    ("409", "(PS3.18 store response)", "STOW: no instance stored"),
    ("413", "payload_too_large", "body over its cap"),
    ("415", "unsupported_media_type", "STOW not multipart/related; type=application/dicom, or compressed"),  # noqa: E501
    ("429", "too_many_requests", "rate limit, with Retry-After"),
    ("503", "unavailable", "IdP keys, archive, policy or audit store down (fail closed), with Retry-After"),  # noqa: E501
    ("504", "archive_timeout", "the archive did not answer in time"),
]  # fmt: skip


def render() -> str:
    limits = Limits()
    out: list[str] = [
        "# DICOMweb conformance statement",
        "",
        "<!-- Generated by `python -m dicomweb_gateway conformance --output docs/conformance.md`",
        "     from the route table (services/gateway/src/dicomweb_gateway/conformance.py and",
        "     parse.py). Do not edit by hand: services/gateway/tests/test_conformance_doc.py",
        "     fails when this file and the code disagree. -->",
        "",
        "The gateway (`/dicom-web`, `/wado`) in front of Orthanc 1.10.1 with the DICOMweb plugin "
        "1.7. Each row is a transaction on a resource with one media type, marked **supported**, "
        "**refused by design** (with the reason) or **not offered by this archive**. Paths are "
        "relative to `/dicom-web` unless they start with `/wado`. Every supported row has a "
        "differential check (`tests/test_conformance.py`): the same request to the gateway and "
        "straight to the archive, answers equal apart from URLs rewritten to the gateway.",
        "",
        "## Transactions",
        "",
    ]
    out += _table(
        ["transaction", "method", "resource", "media type", "parameters", "status", "notes"],
        (
            [
                f"`{r.transaction}`",
                r.method,
                f"`{r.path}`",
                r.media,
                r.params,
                f"**{r.status}**",
                r.note,
            ]
            for r in ROWS
        ),
    )
    out += [
        "",
        "## QIDO-RS",
        "",
        "### Keys",
        "",
        "Matching keys, by keyword or 8-digit tag (anything else is 400: an unknown key is never "
        "dropped, which would widen the search):",
        "",
    ]
    out += _table(
        ["level", "keys"],
        [
            ["study", ", ".join(STUDY_LEVEL_KEYS)],
            ["series", ", ".join(SERIES_LEVEL_KEYS)],
            ["instance", ", ".join(INSTANCE_LEVEL_KEYS)],
            ["return only (`includefield`)", ", ".join(QIDO_RETURN_ONLY)],
        ],
    )
    out += [
        "",
        "`includefield=all` names every key listed above for the searched level and the "
        "levels above it (the archive's own `all` is its default set, a subset: accepted by "
        f"design) (study: {len(LEVEL_KEYS['study'])} attributes; "
        f"series: {len(LEVEL_KEYS['series'])}; "
        f"instance: {len(LEVEL_KEYS['instance'])}), never those of a lower level.",
        "`RequestAttributeSequence` and matching inside sequences are **not offered by this "
        "archive**.",
        "",
        "### Values and matching",
        "",
        f"- Values are percent-decoded once, strictly (UTF-8; bad escapes: 400), at most "
        f"{MAX_VALUE_LENGTH} characters. Every character of the key's VR repertoire is accepted "
        "(PN, LO, SH, CS, ... with Specific Character Set ISO_IR 192 for non-ASCII, as PS3.18 "
        "8.3.4.1 makes a query UTF-8): `O'Brien`, `Smith/Jones`, `A&B`, `50%`, `#2`, `(Jr)`, "
        "`Müller`. Refused (400, by design): control and format characters (Unicode categories "
        "C*), line and paragraph separators, and `\\` (the value delimiter: list values use `,`).",
        "- The archive does not percent-decode its query: characters it cannot read literally "
        "(space, `%`, `&`, `#`, `=`, `[`, non-ASCII, ...) reach it as the wildcard `*`, and the "
        "gateway matches the real value itself, exactly as the archive matches (case-insensitive "
        "for PN and descriptions, case-sensitive for identifiers). Study-level keys the study "
        "index holds are matched in SQL with the same semantics (docs/policy.md, Study index).",
        "- A raw `+` in a query is a space (form encoding, as dicomweb-client and HTML forms "
        "write it); a plus sign is `%2B`. The archive reads a raw `+` as a plus: a difference "
        "accepted by design (a client that percent-encodes gets the same answer from both).",
        "- Wildcards `*` and `?`; date and time ranges `A-B`, `A-`, `-B`; UID lists with `,`.",
        "- `fuzzymatching=true`: for PatientName and ReferringPhysicianName, a value without "
        "wildcards matches names one of whose components begins with it (the archive ignores "
        "the parameter; the gateway defines it).",
        "",
        "### Paging, caps and empty results",
        "",
        f"- `limit` is capped at `limits.qido_max_limit` (default {limits.qido_max_limit}); it is "
        "also the page size when no `limit`, or `limit=0` (read as no limit, like the archive), "
        "is given. `offset` pages over permitted results only (AP-1).",
        '- When the cap cuts an answer it carries `Warning: 299 {+SERVICE}: "The number of '
        "results exceeded the maximum supported by the server. Additional results can be "
        'requested. N results match."` (PS3.18 6.7.1.2), N being the number of permitted '
        "matches when the study index knows it (study searches on indexed keys), absent "
        "otherwise. A `limit` the client chose below the cap is its own paging: no warning.",
        "- Empty results are `200` with `[]` (JSON) or a multipart body with no part (XML), "
        "never `204`: the archive answers `200 []` and clients (dicomweb-client, OHIF) read "
        "it; CP-2473 allows either, this is the choice.",
        "- A search under `/studies/{study}/series/{series}/instances` for a series the "
        "permitted study does not hold answers **404** (refused by design; the archive answers "
        "`200 []`): a series of another study must be refused (AP-1, mixed paths), and an "
        "unknown series gets the same answer, so the existence of a series UID is never "
        "disclosed.",
        "",
        "## Rendered resources",
        "",
        "- `window=center,width,function`: function "
        + ", ".join(f"`{f}`" for f in sorted(WINDOW_FUNCTIONS))
        + " (VOI LUT Function spellings accepted, sent in the lower-case form), width >= 1.",
        "- `viewport=vw,vh` or `vw,vh,[sx],[sy],[sw],[sh]`; `quality=1..100`.",
        f"- `iccprofile=no` only: {NOT_IMPLEMENTED['iccprofile']}.",
        f"- `annotation`: {NOT_IMPLEMENTED['annotation']}.",
        "- Media types: image/jpeg (default for `image/*`, `*/*`, or no Accept), image/png; "
        "anything else is 406.",
        "",
        "## Security choices visible to clients",
        "",
        "- An unknown study answers 403, the same as a study the caller may not see: existence "
        "is never disclosed. An object addressed under a study it does not belong to: 404.",
        "- Counts, offsets and `limit` are computed over permitted results only (AP-1).",
        "- Archive-native routes are 404; tokens in the query string are refused.",
        "- The archive's URLs never leave: RetrieveURL and BulkDataURI name the gateway (AP-4).",
        "",
        "## Error mapping",
        "",
    ]
    out += _table(["status", "error code", "when"], ([a, b, c] for a, b, c in ERROR_ROWS))
    out += ["", "Archive answers are mapped, never passed on (AP-6):", ""]
    mapped = []
    for status in (400, 404, 406, 413, 415, 422, 500, 502, 503, 504):
        error = archive_error(status, "x")
        mapped.append([str(status), f"{error.status} `{error.code}`"])
    out += _table(["archive status", "gateway answer"], mapped)
    out += [
        "",
        "A retrieval whose Accept names a transfer syntax that the archive refuses (400, 415, "
        "500, 501) answers 406 `not_acceptable`.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomweb-gateway conformance")
    parser.add_argument("--output", help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    text = render()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
