"""De-identified research views end to end (DA-1, AP-1), against the running stack.

`trial-analyst` holds only the policy's de-identified grant on the trial-42 study. Every path
(QIDO at three levels, metadata, instance/series/study retrieval, frames, bulk data, rendered,
thumbnails, WADO-URI) is read twice (the second time a data-plane decision would be cached):
the bytes never name the patient (name, ID, birth date, accession number, institution) nor a
real UID, and carry pseudonymous UIDs only. Real UIDs are refused to the analyst; the
pseudonyms are refused to a clinician who sees the same study identified; the archive never
receives a pseudonym; the audit record notes the de-identification.
"""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml
from dicomweb_gateway.audit.store import AuditStore, Filters
from ztstack import demo_data

pytestmark = [pytest.mark.e2e, pytest.mark.control("DA-1")]

READ = "openid user/ImagingStudy.rs"
TRIAL = demo_data.study("p003-ct-chest")
REAL_UIDS = [
    TRIAL.study_instance_uid,
    TRIAL.series_instance_uid,
    *(TRIAL.sop_instance_uid(n) for n in range(1, demo_data.SLICES + 1)),
]
IDENTIFIERS = [
    TRIAL.patient.name,
    TRIAL.patient.patient_id,
    TRIAL.patient.birth_date,
    TRIAL.accession_number,
    TRIAL.patient.institution,
    "Carol",
    *REAL_UIDS,
]
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
OCTETS = 'multipart/related; type="application/octet-stream"'


def bearer(token: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.access_token}"}


def identifiers_in(body: bytes) -> list[str]:
    return [i for i in IDENTIFIERS if i.encode() in body or i.lower().encode() in body.lower()]


def parts(response: httpx.Response) -> list[bytes]:
    boundary = re.search(r"boundary=\"?([^\";]+)", response.headers["content-type"])
    assert boundary, response.headers["content-type"]
    out = []
    for chunk in response.content.split(b"--" + boundary.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break
        out.append(chunk.partition(b"\r\n\r\n")[2][:-2])
    return out


@pytest.fixture(scope="module")
def analyst(tokens: Any) -> Any:
    return tokens.user("trial-analyst", READ)


@pytest.fixture(scope="module")
def pseudonyms(stack: dict[str, Any], https: httpx.Client, analyst: Any) -> dict[str, str]:
    """The study, series and first instance as the analyst sees them (from QIDO)."""
    root = stack["dicomweb_url"]
    studies = https.get(f"{root}/studies", headers=bearer(analyst)).json()
    assert len(studies) == 1, studies
    study = studies[0]["0020000D"]["Value"][0]
    series = https.get(f"{root}/studies/{study}/series", headers=bearer(analyst)).json()
    series_uid = series[0]["0020000E"]["Value"][0]
    url = f"{root}/studies/{study}/series/{series_uid}/instances"
    instances = https.get(url, headers=bearer(analyst)).json()
    numbers = {i["00200013"]["Value"][0]: i["00080018"]["Value"][0] for i in instances}
    return {"S": study, "SE": series_uid, "I": numbers[1]}


PATHS = [
    ("search_for_studies", "{root}/studies", "application/dicom+json"),
    ("search_for_studies_by_uid", "{root}/studies?StudyInstanceUID={S}", "application/dicom+json"),
    ("search_for_series", "{root}/studies/{S}/series", "application/dicom+json"),
    ("search_for_instances", "{root}/studies/{S}/series/{SE}/instances", "application/dicom+json"),
    ("retrieve_study_metadata", "{root}/studies/{S}/metadata", "application/dicom+json"),
    ("retrieve_series_metadata", "{root}/studies/{S}/series/{SE}/metadata", "*/*"),
    ("retrieve_instance_metadata", "{root}/studies/{S}/series/{SE}/instances/{I}/metadata", "*/*"),
    ("retrieve_study", "{root}/studies/{S}", MULTIPART_DICOM),
    ("retrieve_series", "{root}/studies/{S}/series/{SE}", MULTIPART_DICOM),
    ("retrieve_instance", "{root}/studies/{S}/series/{SE}/instances/{I}", MULTIPART_DICOM),
    ("retrieve_frames", "{root}/studies/{S}/series/{SE}/instances/{I}/frames/1", OCTETS),
    ("retrieve_bulkdata", "{root}/studies/{S}/series/{SE}/instances/{I}/bulk/7fe00010", OCTETS),
    ("retrieve_rendered", "{root}/studies/{S}/series/{SE}/instances/{I}/rendered", "image/jpeg"),
    ("retrieve_study_thumbnail", "{root}/studies/{S}/thumbnail", "image/jpeg"),
    (
        "retrieve_instance_thumbnail",
        "{root}/studies/{S}/series/{SE}/instances/{I}/thumbnail",
        "*/*",
    ),
    (
        "wado_uri_dicom",
        "{base}/wado?requestType=WADO&studyUID={S}&seriesUID={SE}&objectUID={I}"
        "&contentType=application%2Fdicom",
        "*/*",
    ),
    (
        "wado_uri_jpeg",
        "{base}/wado?requestType=WADO&studyUID={S}&seriesUID={SE}&objectUID={I}",
        "*/*",
    ),
]


def _url(stack: dict[str, Any], template: str, uids: dict[str, str]) -> str:
    return template.format(root=stack["dicomweb_url"], base=stack["gateway_url"], **uids)


@pytest.mark.control("AP-1")
def test_every_path_serves_only_deidentified_bytes(
    stack: dict[str, Any],
    https: httpx.Client,
    analyst: Any,
    pseudonyms: dict[str, str],
    archive_log: Any,
) -> None:
    assert all(re.fullmatch(r"2\.25\.\d+", u) for u in pseudonyms.values()), pseudonyms
    mark = archive_log.mark()
    problems = []
    for name, template, accept in PATHS:
        for attempt in (1, 2):  # the second read would hit a cached data-plane decision
            r = https.get(
                _url(stack, template, pseudonyms), headers=bearer(analyst) | {"Accept": accept}
            )
            if r.status_code != 200 or not r.content:
                problems.append(f"{name} #{attempt}: {r.status_code} {r.text[:200]}")
                continue
            leaked = identifiers_in(r.content)
            if leaked:
                problems.append(f"{name} #{attempt}: names {leaked}")
            if "dicom" in r.headers["content-type"] and "json" not in r.headers["content-type"]:
                bodies = parts(r) if "multipart" in r.headers["content-type"] else [r.content]
                for body in bodies:
                    ds = pydicom.dcmread(io.BytesIO(body))
                    assert body[:128] == b"\0" * 128
                    assert ds.PatientIdentityRemoved == "YES"
                    assert not ds.PatientName
                    assert ds.PatientID.startswith("DEID-")
                    assert ds.StudyInstanceUID == pseudonyms["S"]
            if "json" in r.headers["content-type"]:
                for item in r.json():
                    assert not item.get("00100010", {}).get("Value"), item
                    for tag in ("0020000D", "0020000E", "00080018"):
                        for uid in item.get(tag, {}).get("Value", []):
                            assert uid.startswith("2.25."), (name, tag, uid)
    assert not problems, "\n".join(problems)
    # The archive was asked with real UIDs only: a pseudonym never leaves the gateway.
    for entry in archive_log.since(mark):
        assert not any(p in entry.uri for p in pseudonyms.values()), entry.uri


def test_metadata_is_marked_and_its_bulk_uris_are_pseudonymous(
    stack: dict[str, Any], https: httpx.Client, analyst: Any, pseudonyms: dict[str, str]
) -> None:
    url = _url(stack, "{root}/studies/{S}/metadata", pseudonyms)
    items = https.get(url, headers=bearer(analyst)).json()
    assert len(items) == demo_data.SLICES
    for item in items:
        assert item["00120062"]["Value"] == ["YES"]
        codes = [c["00080100"]["Value"][0] for c in item["00120064"]["Value"]]
        assert codes == ["113100", "113107", "113108", "113105"]
        assert item["00080020"]["Value"] != [demo_data.STUDY_DATE]  # modified dates
        bulk = item["7FE00010"].get("BulkDataURI", "")
        assert bulk.startswith(stack["dicomweb_url"] + "/studies/" + pseudonyms["S"]), bulk
        assert https.get(bulk, headers=bearer(analyst) | {"Accept": OCTETS}).status_code == 200


def test_real_uids_are_refused_to_the_analyst(
    stack: dict[str, Any], https: httpx.Client, analyst: Any, archive_log: Any
) -> None:
    real = {
        "S": TRIAL.study_instance_uid,
        "SE": TRIAL.series_instance_uid,
        "I": TRIAL.sop_instance_uid(1),
    }
    mark = archive_log.mark()
    for name, template, accept in PATHS:
        r = https.get(_url(stack, template, real), headers=bearer(analyst) | {"Accept": accept})
        if name.startswith("search_for_studies"):
            # A search answers, but never with the study found through its real UID.
            assert r.status_code == 200
            if "StudyInstanceUID" in template:
                assert r.json() == [], r.text
            continue
        assert r.status_code in (403, 404), (name, r.status_code)
        assert not identifiers_in(r.content), name
    for entry in archive_log.since(mark):
        assert TRIAL.study_instance_uid not in entry.uri, entry.uri


def test_pseudonyms_are_refused_outside_the_deidentified_grant(
    stack: dict[str, Any],
    https: httpx.Client,
    tokens: Any,
    pseudonyms: dict[str, str],
    archive_log: Any,
) -> None:
    # north-clinician reads the same study identified (site:north); the pseudonyms mean nothing.
    clinician = tokens.user("north-clinician", READ)
    mark = archive_log.mark()
    for name, template, accept in PATHS:
        r = https.get(
            _url(stack, template, pseudonyms), headers=bearer(clinician) | {"Accept": accept}
        )
        if name == "search_for_studies":
            continue  # the clinician's own, identified list
        if name.startswith("search_for_studies"):
            assert r.status_code == 200 and r.json() == [], r.text
            continue
        assert r.status_code in (403, 404), (name, r.status_code)
    for entry in archive_log.since(mark):
        assert not any(p in entry.uri for p in pseudonyms.values()), entry.uri


def test_a_query_on_identifying_keys_finds_nothing_deidentified(
    stack: dict[str, Any], https: httpx.Client, analyst: Any
) -> None:
    root = stack["dicomweb_url"]
    for query in ("PatientName=Trial*", "PatientID=ZT-P003", "AccessionNumber=ZT-A0005"):
        r = https.get(f"{root}/studies?{query}", headers=bearer(analyst))
        assert r.status_code == 200 and r.json() == [], (query, r.text)
    assert (
        len(https.get(f"{root}/studies?ModalitiesInStudy=CT", headers=bearer(analyst)).json()) == 1
    )


def test_the_audit_record_notes_the_deidentification(
    stack: dict[str, Any], https: httpx.Client, analyst: Any, pseudonyms: dict[str, str]
) -> None:
    settings = yaml.safe_load(
        (Path(stack["run_dir"]) / "gateway" / "settings.yaml").read_text(encoding="utf-8")
    )
    r = https.get(_url(stack, "{root}/studies/{S}/metadata", pseudonyms), headers=bearer(analyst))
    assert r.status_code == 200
    store = AuditStore(str(settings["audit"]["database_url"]))
    try:
        rows = store.search(Filters(request_id=r.headers["x-request-id"]))
    finally:
        store.dispose()
    assert rows
    message = ET.fromstring(rows[0]["message"])  # noqa: S314 - the gateway's own output
    details = [
        base64.b64decode(d.get("value", "")).decode()
        for d in message.iter("ParticipantObjectDetail")
        if d.get("type") == "Deidentified"
    ]
    assert details == ["PS3.15 Annex E; project trial-42"]
    # The audit trail names the real study and patient (it is the gateway's own record).
    ids = [o.get("ParticipantObjectID") for o in message.iter("ParticipantObjectIdentification")]
    assert TRIAL.study_instance_uid in ids and TRIAL.patient.patient_id in ids
