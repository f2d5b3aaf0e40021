"""The data plane (issue 13): nginx streams bulk reads after the gateway decided (AP-8, AP-2).

- A decision is cached per (token, study) for at most `edge.decision_ttl_seconds`: a label
  change refuses the next read within that bound, and reads inside one window share one audit
  record (the response's X-Request-Id names it).
- The data plane's internal parts (the decision endpoint, its subrequest location, the error
  bodies) cannot be reached from outside, and a client cannot forge the edge's secret.
- The gateway itself listens only on a Unix socket nobody else may open; the edge's
  configuration (which holds the archive's credentials) is private.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dicomweb_gateway.audit.store import AuditStore, Filters

from tests.dicom_parts import multipart, new_instance, part10

pytestmark = pytest.mark.e2e

MFA = "urn:zt:acr:mfa"
RS_C = "openid user/ImagingStudy.rs user/ImagingStudy.c"
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def bearer(token: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.access_token}"}


@pytest.fixture(scope="module")
def settings(stack: dict[str, Any]) -> dict[str, Any]:
    path = Path(stack["run_dir"]) / "gateway" / "settings.yaml"
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture
def own_study(stack: dict[str, Any], https: httpx.Client, tokens: Any) -> tuple[str, str, str]:
    """A fresh North study for each test (relabelled below without touching the demo data)."""
    clinician = tokens.user("north-clinician", RS_C)
    ds = new_instance()
    ctype, body = multipart([part10(ds)])
    r = https.post(
        f"{stack['dicomweb_url']}/studies",
        headers=bearer(clinician) | {"Content-Type": ctype},
        content=body,
    )
    assert r.status_code == 200, r.text
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def frame(
    stack: dict[str, Any], https: httpx.Client, token: Any, uids: tuple[str, str, str]
) -> httpx.Response:
    study, series, sop = uids
    return https.get(
        f"{stack['dicomweb_url']}/studies/{study}/series/{series}/instances/{sop}/frames/1",
        headers=bearer(token) | {"Accept": FRAMES},
    )


@pytest.mark.control("AP-8")
def test_reads_in_one_window_share_one_decision_and_one_record(
    stack: dict[str, Any],
    https: httpx.Client,
    tokens: Any,
    settings: dict[str, Any],
    own_study: tuple[str, str, str],
) -> None:
    clinician = tokens.user("north-clinician", RS_C)
    answers = [frame(stack, https, clinician, own_study) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    ids = {a.headers["x-request-id"] for a in answers}
    assert len(ids) == 1  # one decision for the window
    store = AuditStore(settings["audit"]["database_url"])
    try:
        rows = store.search(Filters(request_id=ids.pop()))
    finally:
        store.dispose()
    assert [(r["event_id"], r["event_action"], r["outcome"]) for r in rows] == [("110104", "R", 0)]
    assert own_study[0] in rows[0]["message"]


@pytest.mark.control("AP-8")
def test_a_label_change_refuses_the_next_read_within_the_bound(
    stack: dict[str, Any],
    https: httpx.Client,
    tokens: Any,
    settings: dict[str, Any],
    own_study: tuple[str, str, str],
) -> None:
    bound = int(settings["edge"]["decision_ttl_seconds"])
    clinician = tokens.user("north-clinician", RS_C)
    assert frame(stack, https, clinician, own_study).status_code == 200  # decision cached
    admin = tokens.user("admin", "openid", acr_values=MFA, max_age=300)
    changed = https.patch(
        f"{stack['gateway_url']}/admin/studies/{own_study[0]}/labels",
        headers=bearer(admin) | {"Content-Type": "application/json"},
        json={"remove": ["site:north"], "reason": "AP-8 cache bound test"},
    )
    assert changed.status_code == 200, changed.text
    started = time.monotonic()
    while True:
        status = frame(stack, https, clinician, own_study).status_code
        elapsed = time.monotonic() - started
        if status == 403:
            break
        assert status == 200
        assert elapsed <= bound + 2, f"still readable {elapsed:.1f} s after the label change"
        time.sleep(0.5)
    assert elapsed <= bound + 2


@pytest.mark.control("AP-2")
@pytest.mark.parametrize(
    "path", ["/_zt/authz", "/_zt_decide", "/_zt_errors/500.json", "/_zt/authz?x=1"]
)
def test_internal_locations_are_unreachable(
    stack: dict[str, Any], https: httpx.Client, tokens: Any, settings: dict[str, Any], path: str
) -> None:
    """Even with a valid token and the right secret header, nothing internal answers."""
    secret = Path(settings["edge"]["secret_file"]).read_text(encoding="utf-8").strip()
    clinician = tokens.user("north-clinician", RS_C)
    r = https.get(
        stack["gateway_url"] + path,
        headers=bearer(clinician)
        | {
            "X-Zt-Edge-Secret": secret,
            "X-Zt-Original-Uri": "/dicom-web/studies/1.2.3/metadata",
            "X-Zt-Original-Method": "GET",
        },
    )
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"
    assert "x-accel-expires" not in r.headers and "x-zt-decision" not in r.headers


@pytest.mark.control("AP-2")
def test_the_gateway_socket_and_the_edge_config_are_private(
    stack: dict[str, Any], settings: dict[str, Any]
) -> None:
    sock = Path(settings["listen"]["uds"])
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    config = Path(stack["run_dir"]) / "edge" / "nginx.conf"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    # Nothing listens for the gateway on TCP but the edge: its port is nginx's.
    assert settings["listen"].get("uds")


@pytest.mark.control("AP-6")
def test_data_plane_answers_carry_no_product_and_the_security_headers(
    stack: dict[str, Any], https: httpx.Client, tokens: Any, own_study: tuple[str, str, str]
) -> None:
    clinician = tokens.user("north-clinician", RS_C)
    study, series, sop = own_study
    for path in (
        f"/studies/{study}/series/{series}/instances/{sop}/frames/1",
        f"/studies/{study}/series/{series}/metadata",
        f"/studies/{study}/series/{series}/instances/1.2.3/frames/1",  # archive 404
    ):
        r = https.get(stack["dicomweb_url"] + path, headers=bearer(clinician) | {"Accept": "*/*"})
        headers = " ".join(f"{k}: {v}" for k, v in r.headers.items()).lower()
        for word in ("nginx", "orthanc", "server:", stack["archive"]["http_url"]):
            assert word.lower() not in headers, (path, headers)
        assert "strict-transport-security" in r.headers
        assert r.headers.get("x-content-type-options") == "nosniff"
        if r.status_code >= 400:
            assert r.json()["error"] in ("not_found", "insufficient_scope")
        assert "orthanc" not in r.text.lower() and "nginx" not in r.text.lower()


@pytest.mark.control("AP-5")
def test_part10_files_streamed_by_the_edge_have_zero_preambles(
    stack: dict[str, Any], https: httpx.Client, tokens: Any
) -> None:
    """The edge streams stored files as they are; every way into the archive writes a zero
    preamble, so every application/dicom part it returns has one (PS3.10 7.5, CVE-2019-11687)."""
    from ztstack import demo_data

    radiologist = tokens.user("radiologist")
    checked = 0
    for s in demo_data.STUDIES:
        if s.patient.patient_id == "ZT-P004":
            continue  # the VIP studies need break-glass
        r = https.get(
            f"{stack['dicomweb_url']}/studies/{s.study_instance_uid}",
            headers=bearer(radiologist) | {"Accept": 'multipart/related; type="application/dicom"'},
        )
        assert r.status_code == 200, (s.key, r.text[:200])
        assert r.headers.get("x-request-id")  # streamed under a decision
        at = r.content.find(b"DICM")
        while at != -1:
            assert r.content[at - 128 : at] == bytes(128), s.key
            checked += 1
            at = r.content.find(b"DICM", at + 4)
    assert checked >= 20
