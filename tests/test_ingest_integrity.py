"""The archive stores exactly what the gateway authorized (AP-7) and DICOM has one door (DV-4).

One test per finding of issue 10, each replayed as the attacker did it, with ordinary demo
accounts and devices. Every test reads state afterwards: which instances the archive holds in
which study (asked of the archive directly, with its own credentials), which labels the policy
store holds, and which audit records were written.
"""

from __future__ import annotations

import io
import json
import sqlite3
import ssl
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml
from dicomweb_gateway.audit.store import AuditStore, Filters
from ztstack import demo_data

from tests.dicom_parts import multipart, new_instance, part10

pytestmark = pytest.mark.e2e

MFA = "urn:zt:acr:mfa"
LEGAL_HOLD = demo_data.study("p002-mr-knee")  # South Valley, legal hold
VIP = demo_data.study("p004-ct-head")
SOUTH = demo_data.study("p002-ct-abdomen")
OLD_BOUNDARY = b"zt-gateway-stow-boundary-7f3c"


# --- state readers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(stack: dict[str, Any]) -> Any:
    """The archive itself, with the gateway's credentials: the ground truth."""
    a = stack["archive"]
    ctx = ssl.create_default_context(cafile=stack["ca_cert"])
    ctx.load_cert_chain(a["gateway_client_cert"], a["gateway_client_key"])
    password = Path(a["password_file"]).read_text(encoding="utf-8").strip()
    with httpx.Client(
        base_url=a["http_url"], verify=ctx, auth=(a["username"], password), timeout=30
    ) as client:
        yield client


def held(archive: httpx.Client, study: str) -> set[tuple[str, str]]:
    """(series, SOP instance) pairs the archive holds in a study."""
    r = archive.get(
        f"/dicom-web/studies/{study}/instances",
        params={"includefield": "0020000E"},
        headers={"Accept": "application/dicom+json"},
    )
    if r.status_code in (204, 404):
        return set()
    r.raise_for_status()
    return {(i["0020000E"]["Value"][0], i["00080018"]["Value"][0]) for i in r.json() or []}


def where_is(archive: httpx.Client, sop: str) -> set[str]:
    r = archive.post("/tools/lookup", content=sop)
    r.raise_for_status()
    studies = set()
    for hit in r.json():
        if hit["Type"] == "Instance":
            tags = archive.get(f"/instances/{hit['ID']}/simplified-tags").json()
            studies.add(tags["StudyInstanceUID"])
    return studies


@pytest.fixture(scope="module")
def settings(stack: dict[str, Any]) -> dict[str, Any]:
    path = Path(stack["run_dir"]) / "gateway" / "settings.yaml"
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


def labels(settings: dict[str, Any], study: str) -> set[str]:
    db = settings["database_url"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT label FROM study_label WHERE study_instance_uid = ?", (study,)
        ).fetchall()
    return {r[0] for r in rows}


@pytest.fixture(scope="module")
def audit(settings: dict[str, Any]) -> Any:
    store = AuditStore(settings["audit"]["database_url"])
    yield store
    store.dispose()


def audit_of(audit: AuditStore, response: httpx.Response) -> list[dict[str, Any]]:
    return audit.search(Filters(request_id=response.headers["x-request-id"]))


def bearer(token: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.access_token}"}


def stow(
    https: httpx.Client, stack: dict[str, Any], token: Any, parts: list[bytes], study: str = ""
) -> httpx.Response:
    ctype, body = multipart(parts)
    path = f"{stack['dicomweb_url']}/studies" + (f"/{study}" if study else "")
    return https.post(
        path, headers=bearer(token) | {"Content-Type": ctype}, content=body, timeout=60
    )


def duplicate_first(data: bytes, tag: int, value: str) -> bytes:
    """Insert a second element `tag` = value right before the real one (DCMTK keeps the first,
    pydicom the last)."""
    raw = value.encode() + (b"\0" if len(value) % 2 else b"")
    element = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"UI" + struct.pack("<H", len(raw))
    at = data.find(struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"UI")
    assert at > 0
    return data[:at] + element + raw + data[at:]


# --- AP-7 findings 1-4 ------------------------------------------------------------------------


@pytest.mark.control("AP-7")
def test_duplicate_study_uid_cannot_reach_another_study(
    stack: dict[str, Any],
    https: httpx.Client,
    tokens: Any,
    archive: httpx.Client,
    settings: dict[str, Any],
    audit: AuditStore,
) -> None:
    """Finding 1: victim UID first, a fresh UID last; the gateway used to authorize the decoy."""
    clinician = tokens.user("north-clinician", "openid user/ImagingStudy.rs user/ImagingStudy.c")
    before, before_labels = (
        held(archive, LEGAL_HOLD.study_instance_uid),
        labels(settings, LEGAL_HOLD.study_instance_uid),
    )
    ds = new_instance()
    hostile = duplicate_first(part10(ds), 0x0020000D, LEGAL_HOLD.study_instance_uid)
    r = stow(https, stack, clinician, [hostile])
    assert r.status_code == 409, r.text
    assert held(archive, LEGAL_HOLD.study_instance_uid) == before
    assert where_is(archive, ds.SOPInstanceUID) == set()
    assert labels(settings, LEGAL_HOLD.study_instance_uid) == before_labels
    rows = audit_of(audit, r)
    # A Security Alert naming the anomaly, and the failed transfer (outcome 4, nothing stored).
    assert [(row["event_id"], row["outcome"]) for row in rows] == [("110113", 4), ("110104", 4)]
    assert "malformed-dicom" in rows[0]["message"]
    meta = https.get(
        f"{stack['dicomweb_url']}/studies/{LEGAL_HOLD.study_instance_uid}/metadata",
        headers=bearer(tokens.user("north-clinician")),
    )
    assert meta.status_code == 403


@pytest.mark.control("AP-7")
def test_boundary_inside_a_part_smuggles_nothing(
    stack: dict[str, Any], https: httpx.Client, tokens: Any, archive: httpx.Client
) -> None:
    """Finding 2: a store-only device hides a VIP-study file behind the old fixed boundary."""
    modality = tokens.device("modality-ct1", "system/ImagingStudy.c")
    smuggled = new_instance(VIP.study_instance_uid, "ZT-P004")
    inner = part10(smuggled)
    carrier = new_instance(rows=4)
    payload = b"\r\n--" + OLD_BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n" + inner
    carrier.PixelData = payload + b"\0" * (len(payload) % 2)
    carrier.Rows = carrier.Columns = 1  # the pixel data is the attack, not an image
    before = held(archive, VIP.study_instance_uid)
    r = stow(https, stack, modality, [part10(carrier)])
    assert r.status_code == 200, r.text
    assert held(archive, VIP.study_instance_uid) == before
    assert where_is(archive, smuggled.SOPInstanceUID) == set()
    assert where_is(archive, carrier.SOPInstanceUID) == {carrier.StudyInstanceUID}


@pytest.mark.control("AP-7")
def test_a_later_instance_changes_no_label_and_no_patient(
    stack: dict[str, Any],
    https: httpx.Client,
    tokens: Any,
    archive: httpx.Client,
    settings: dict[str, Any],
) -> None:
    """Finding 3: another PatientID is refused; a trial ID on a later instance adds no label."""
    modality = tokens.device("modality-ct1", "system/ImagingStudy.c")
    study = SOUTH.study_instance_uid
    before, before_labels = held(archive, study), labels(settings, study)
    other_patient = new_instance(study, "RT-X")
    other_patient.ClinicalTrialProtocolID = "TRIAL-42"
    r = stow(https, stack, modality, [part10(other_patient)], study)
    assert r.status_code == 409, r.text
    assert held(archive, study) == before
    same_patient = new_instance(study, SOUTH.patient.patient_id)
    same_patient.InstitutionName = "South Valley Clinic"
    same_patient.ClinicalTrialProtocolID = "TRIAL-42"
    r = stow(https, stack, modality, [part10(same_patient)], study)
    assert r.status_code == 200, r.text
    assert held(archive, study) == before | {
        (same_patient.SeriesInstanceUID, same_patient.SOPInstanceUID)
    }
    assert labels(settings, study) == before_labels
    researcher = tokens.user("researcher")
    r = https.get(f"{stack['dicomweb_url']}/studies/{study}/metadata", headers=bearer(researcher))
    assert r.status_code == 403


@pytest.mark.control("AP-7")
def test_series_uid_collision_deletes_nothing_of_the_legal_hold_study(
    stack: dict[str, Any],
    https: httpx.Client,
    tokens: Any,
    archive: httpx.Client,
    audit: AuditStore,
) -> None:
    """Finding 4: reuse the legal-hold study's series UID in a new study, then delete it."""
    lh_series = {series for series, _ in held(archive, LEGAL_HOLD.study_instance_uid)}
    series = sorted(lh_series)[0]
    before = held(archive, LEGAL_HOLD.study_instance_uid)
    radiologist = tokens.user(
        "radiologist", "openid user/ImagingStudy.rs user/ImagingStudy.c user/ImagingStudy.d",
        acr_values=MFA, max_age=0,
    )  # fmt: skip
    decoy = new_instance()
    decoy.SeriesInstanceUID = series
    r = stow(https, stack, radiologist, [part10(decoy)])
    assert r.status_code == 409, r.text
    assert "110113" in [row["event_id"] for row in audit_of(audit, r)]
    assert held(archive, decoy.StudyInstanceUID) == set()
    # A collision that exists already (stored straight into the archive before the gateway).
    archive.post(
        "/instances", content=part10(decoy), headers={"Content-Type": "application/dicom"}
    ).raise_for_status()
    r = https.delete(
        f"{stack['dicomweb_url']}/studies/{decoy.StudyInstanceUID}/series/{series}",
        headers=bearer(radiologist),
    )
    # The change feed may not have labelled the decoy study yet (then 403); either way the
    # legal-hold study keeps every instance.
    assert r.status_code in (204, 403), r.text
    assert held(archive, LEGAL_HOLD.study_instance_uid) == before
    # Remove the collision this test planted, so later tests see an archive without one.
    found = archive.post("/tools/lookup", content=decoy.StudyInstanceUID).json()
    for hit in found:
        if hit["Type"] == "Study":
            archive.delete(f"/studies/{hit['ID']}").raise_for_status()
    assert held(archive, LEGAL_HOLD.study_instance_uid) == before


# --- DV-4: the DIMSE front door ---------------------------------------------------------------

# Each DIMSE peer runs in its own interpreter (pynetdicom leaves refused TLS sockets to the
# garbage collector, which warnings-as-errors would blame on the next test).
PEER = textwrap.dedent(
    """
    import json, ssl, sys
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification

    a = json.loads(sys.argv[1])
    ae = AE(ae_title=a["calling"])
    ae.add_requested_context(Verification)
    ae.add_requested_context(SecondaryCaptureImageStorage)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 20
    ctx = ssl.create_default_context(cafile=a["ca"])
    if a["cert"]:
        ctx.load_cert_chain(*a["cert"])
    out = {"established": False}
    try:
        tls = (ctx, "localhost")
        assoc = ae.associate("127.0.0.1", a["port"], ae_title=a["called"], tls_args=tls)
    except (ssl.SSLError, OSError) as e:
        out["error"] = type(e).__name__
    else:
        if assoc.is_established:
            out["established"] = True
            status = assoc.send_c_store(dcmread(a["file"])) if a["file"] else assoc.send_c_echo()
            out["status"] = getattr(status, "Status", None)
            if assoc.is_established:
                assoc.release()
    print(json.dumps(out))
    """
)


def dimse(
    stack: dict[str, Any], file: Path | None, calling: str = "MODALITY_CT1", port: int = 0
) -> dict[str, Any]:
    door = stack["dimse"]
    device = door["registered_aets"]["MODALITY_CT1"]
    args = {
        "calling": calling,
        "called": door["aet"],
        "port": port or door["port"],
        "ca": stack["ca_cert"],
        "cert": [device["cert"], device["key"]],
        "file": str(file) if file else None,
    }
    done = subprocess.run(
        [sys.executable, "-c", PEER, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def audit_mark(settings: dict[str, Any]) -> int:
    """The newest audit record's sequence number: later searches read only what follows."""
    db = settings["audit"]["database_url"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM audit_record").fetchone()[0])


def device_records(audit: AuditStore, study: str, mark: int) -> list[dict[str, Any]]:
    rows = audit.search(Filters(study=study, after_seq=mark, limit=1000))
    return [r for r in rows if r["user_id"] == "modality-ct1"]


@pytest.mark.control("DV-4")
def test_c_store_through_the_door_is_stored_labelled_and_audited(
    stack: dict[str, Any],
    archive: httpx.Client,
    settings: dict[str, Any],
    audit: AuditStore,
    tmp_path: Path,
) -> None:
    ds = new_instance()
    file = tmp_path / "new.dcm"
    file.write_bytes(part10(ds))
    mark = audit_mark(settings)
    out = dimse(stack, file)
    assert out == {"established": True, "status": 0}
    assert where_is(archive, ds.SOPInstanceUID) == {ds.StudyInstanceUID}
    assert labels(settings, ds.StudyInstanceUID) == {"site:north"}
    rows = device_records(audit, ds.StudyInstanceUID, mark)
    assert [(r["event_id"], r["event_action"], r["outcome"]) for r in rows] == [("110104", "C", 0)]


@pytest.mark.control("DV-4")
def test_c_store_into_a_legal_hold_study_is_refused_and_audited(
    stack: dict[str, Any],
    archive: httpx.Client,
    settings: dict[str, Any],
    audit: AuditStore,
    tmp_path: Path,
) -> None:
    """Finding 5: the same store the gateway's STOW refuses is refused at the DICOM door."""
    before = held(archive, LEGAL_HOLD.study_instance_uid)
    ds = new_instance(LEGAL_HOLD.study_instance_uid, LEGAL_HOLD.patient.patient_id)
    file = tmp_path / "lh.dcm"
    file.write_bytes(part10(ds))
    mark = audit_mark(settings)
    out = dimse(stack, file)
    assert out["established"] and out["status"] == 0x0124, out
    assert held(archive, LEGAL_HOLD.study_instance_uid) == before
    rows = device_records(audit, LEGAL_HOLD.study_instance_uid, mark)
    assert rows and rows[-1]["event_id"] == "110113" and rows[-1]["outcome"] == 4


@pytest.mark.control("DV-4")
def test_the_archive_takes_no_dicom_and_the_door_binds_certificate_to_ae(
    stack: dict[str, Any],
    archive: httpx.Client,
    settings: dict[str, Any],
    audit: AuditStore,
    tmp_path: Path,
) -> None:
    mark = audit_mark(settings)
    ds = new_instance()
    file = tmp_path / "direct.dcm"
    file.write_bytes(part10(ds))
    # Straight to the archive's DICOM port with the device's own certificate: nothing listens.
    direct = dimse(stack, file, port=stack["archive"]["dicom_port"])
    assert direct["established"] is False, direct
    # The device's certificate with another registered-looking AE title: refused.
    spoofed = dimse(stack, file, calling="ZT_OTHER_AE")
    assert spoofed.get("status") != 0, spoofed
    assert where_is(archive, ds.SOPInstanceUID) == set()
    refusals = audit.search(Filters(event_id="110113", after_seq=mark, limit=500))
    assert any("association rejected" in r["message"] for r in refusals)


def test_pydicom_reads_what_the_tests_send() -> None:
    """The hostile file of finding 1 really is read two ways (the premise of the test above)."""
    ds = new_instance()
    hostile = duplicate_first(part10(ds), 0x0020000D, LEGAL_HOLD.study_instance_uid)
    assert pydicom.dcmread(io.BytesIO(hostile)).StudyInstanceUID == ds.StudyInstanceUID
    assert hostile.find(LEGAL_HOLD.study_instance_uid.encode()) < hostile.find(
        ds.StudyInstanceUID.encode()
    )
