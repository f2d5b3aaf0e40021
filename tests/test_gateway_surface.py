"""The DICOMweb surface through the running gateway: a real third-party client round trip
(dicomweb-client), the route/method allow-lists and malformed requests from the attack corpus
(AP-2), resource limits (AP-3), no internal URLs (AP-4), the preamble control (AP-5) and safe
errors (AP-6). Every refusal also checks that the archive's request log shows nothing for it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import requests
import yaml
from dicomweb_client.api import DICOMwebClient

from tests.conftest import ca_context
from tests.dicom_parts import PE_PREAMBLE, multipart, new_instance, part10

pytestmark = pytest.mark.e2e

CORPUS = yaml.safe_load(
    (Path(__file__).parent / "attack-corpus" / "gateway-requests.yaml").read_text()
)
SCOPES = "openid user/ImagingStudy.rs user/ImagingStudy.c"


@pytest.fixture(scope="module")
def created(stack: dict[str, Any]) -> Iterator[list[str]]:
    """Studies these tests store; deleted from the archive afterwards so other test files see
    only the demo data (directly, with the archive's credentials: cleanup, not a test path)."""
    uids: list[str] = []
    yield uids
    archive = stack["archive"]
    client_cert = (archive["gateway_client_cert"], archive["gateway_client_key"])
    password = Path(archive["password_file"]).read_text().strip()
    with httpx.Client(
        verify=ca_context(stack, client_cert), timeout=30, auth=(archive["username"], password)
    ) as direct:
        for uid in uids:
            found = direct.post(archive["http_url"] + "/tools/lookup", content=uid).json()
            for item in found:
                if item.get("Type") == "Study":
                    direct.delete(f"{archive['http_url']}/studies/{item['ID']}")


@pytest.fixture(scope="module", params=["orthanc", "dicomweb"])
def surface(request: pytest.FixtureRequest, stack: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The gateway under test, once per archive adapter (issue 17): the stack's own gateway
    (`archive.kind: orthanc`), then one more gateway with `archive.kind: dicomweb` whose `url`
    is the same Orthanc's `/dicom-web` root. At the end of the dicomweb run the archive's log
    must show nothing but DICOMweb requests (the index maintenance of the stack's own gateway,
    `ArchiveLog.BACKGROUND`, left out)."""
    if request.param == "orthanc":
        yield stack
        return
    from tests.conftest import ArchiveLog, gateway_process

    log = ArchiveLog(Path(stack["archive"]["request_log"]))
    mark = log.mark()
    overrides = {
        "archive": {"kind": "dicomweb", "url": stack["archive"]["http_url"] + "/dicom-web"}
    }
    with gateway_process(stack, overrides) as gw:
        yield stack | {
            "gateway_url": gw.url,
            "dicomweb_url": gw.url + "/dicom-web",
            "archive_kind": "dicomweb",
        }
    outside = [e.uri for e in log.since(mark) if not e.uri.startswith("/dicom-web/")]
    assert outside == [], outside


@pytest.fixture(scope="module")
def token(tokens: Any) -> str:
    return str(tokens.user("radiologist", SCOPES).access_token)


@pytest.fixture(scope="module")
def dicomweb(surface: dict[str, Any], token: str) -> DICOMwebClient:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides the deployment CA
    session.verify = surface["ca_cert"]
    session.headers["Authorization"] = f"Bearer {token}"
    return DICOMwebClient(url=surface["dicomweb_url"], session=session)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_no_leak(stack: dict[str, Any], response: httpx.Response) -> None:
    archive = stack["archive"]["http_url"]
    port = archive.rsplit(":", 1)[1]
    text = response.content.decode("latin-1").lower()
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items()).lower()
    for needle in (archive.lower(), f":{port}/", "orthanc", "traceback", "1.10.1"):
        assert needle not in text, needle
        assert needle not in headers, needle
    assert "server" not in response.headers


# ---------------------------------------------------------------- the round trip


@pytest.mark.control("AP-5")
def test_round_trip_with_dicomweb_client(
    surface: dict[str, Any],
    dicomweb: DICOMwebClient,
    https: httpx.Client,
    token: str,
    created: list[str],
) -> None:
    ds = new_instance()
    created.append(ds.StudyInstanceUID)
    sent = part10(ds)
    dicomweb.store_instances(datasets=[pydicom.dcmread(io.BytesIO(sent))])

    found = dicomweb.search_for_studies(search_filters={"PatientID": ds.PatientID})
    assert [s["0020000D"]["Value"][0] for s in found] == [ds.StudyInstanceUID]
    series = dicomweb.search_for_series(ds.StudyInstanceUID)
    assert series[0]["0020000E"]["Value"][0] == ds.SeriesInstanceUID

    back = dicomweb.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert back.PixelData == ds.PixelData  # byte-identical pixel data
    frames = dicomweb.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1]
    )
    assert frames[0] == ds.PixelData
    metadata = dicomweb.retrieve_study_metadata(ds.StudyInstanceUID)
    assert metadata[0]["00080018"]["Value"][0] == ds.SOPInstanceUID

    # The raw bytes: every application/dicom part has an all-zero preamble (AP-5).
    r = https.get(f"{surface['dicomweb_url']}/studies/{ds.StudyInstanceUID}", headers=auth(token))
    assert r.status_code == 200
    at = r.content.index(b"DICM")
    assert r.content[at - 128 : at] == bytes(128)
    assert ds.SOPInstanceUID.encode() in r.content
    assert_no_leak(surface, r)

    # WADO-URI (PS3.18 9) returns the file with a zeroed preamble, and the rendered and
    # thumbnail forms are images.
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    r = https.get(
        f"{surface['gateway_url']}/wado?requestType=WADO&studyUID={study}&seriesUID={series}"
        f"&objectUID={sop}&contentType=application%2Fdicom",
        headers=auth(token),
    )
    if surface.get("archive_kind") == "dicomweb":
        # The standard adapter answers WADO-URI from WADO-RS, a single-part application/dicom
        # instance (PS3.18 8.7.3.5), which Orthanc's plugin 1.7 refuses (docs/archives.md).
        assert r.status_code in (400, 406), r.status_code
    else:
        assert r.status_code == 200 and r.content[:128] == bytes(128)
        assert pydicom.dcmread(io.BytesIO(r.content)).PixelData == ds.PixelData
    instance = f"{surface['dicomweb_url']}/studies/{study}/series/{series}/instances/{sop}"
    for suffix in ("/rendered", "/thumbnail", "/frames/1/rendered"):
        r = https.get(instance + suffix, headers=auth(token) | {"Accept": "image/jpeg"})
        assert r.status_code == 200, (suffix, r.text)
        assert r.headers["content-type"].startswith("image/") and r.content[:2] == b"\xff\xd8"


@pytest.mark.control("AP-5")
def test_executable_preamble_refused(
    surface: dict[str, Any], https: httpx.Client, archive_log: Any, token: str
) -> None:
    for preamble in (PE_PREAMBLE, b"\x7fELF\x02\x01\x01", b"\xcf\xfa\xed\xfe", b"#!/bin/sh\n"):
        ds = new_instance()
        ctype, body = multipart([part10(ds, preamble)])
        mark = archive_log.mark()
        r = https.post(
            f"{surface['dicomweb_url']}/studies",
            content=body,
            headers=auth(token) | {"Content-Type": ctype},
        )
        assert r.status_code == 409, r.text
        failed = r.json()["00081198"]["Value"][0]
        assert failed["00081155"]["Value"] == [ds.SOPInstanceUID]
        assert archive_log.since(mark) == []


# ---------------------------------------------------------------- allow-lists and malformed


@pytest.fixture(scope="module")
def uids(dicomweb: DICOMwebClient) -> dict[str, str]:
    first = dicomweb.search_for_instances()[0]
    return {
        "A": first["0020000D"]["Value"][0],
        "A_series": first["0020000E"]["Value"][0],
        "A_instance": first["00080018"]["Value"][0],
        "root": "/dicom-web",
    }


@pytest.mark.control("AP-2")
@pytest.mark.control("AP-6")
@pytest.mark.parametrize("case_id", [c["id"] for c in CORPUS["malformed"]])
def test_malformed_requests(
    surface: dict[str, Any],
    https: httpx.Client,
    archive_log: Any,
    token: str,
    uids: dict[str, str],
    case_id: str,
) -> None:
    case = next(c for c in CORPUS["malformed"] if c["id"] == case_id)
    expected = case["expect"] if isinstance(case["expect"], list) else [case["expect"]]
    headers = auth(token)
    if case.get("content_type"):
        headers["Content-Type"] = case["content_type"]
    if case.get("content_encoding"):
        headers["Content-Encoding"] = case["content_encoding"]
    url = surface["gateway_url"] + case["path"].format(**uids)
    mark = archive_log.mark()
    r = https.request(case["method"], url, headers=headers, content=case.get("body", "").encode())
    assert r.status_code in expected, (case_id, r.status_code, r.text)
    if r.status_code == 405:
        assert r.headers.get("allow")
    if r.status_code >= 400 and r.status_code != 409:  # 409: the PS3.18 store response
        assert r.json()["error"]  # a code and public text, nothing else
    if case.get("empty"):  # accepted, matched literally: nothing widened
        assert r.json() == [], (case_id, r.text)
    assert_no_leak(surface, r)
    # Owner look-ups for a real study are allowed; no request names the malformed thing.
    assert [
        e
        for e in archive_log.since(mark)
        if "tools" in e.uri or "system" in e.uri or e.method not in ("GET",)
    ] == []


# ---------------------------------------------------------------- resource limits (AP-3)


@pytest.mark.control("AP-3")
def test_qido_limit_clamped(
    stack: dict[str, Any], https: httpx.Client, token: str, extra_gateway: Any
) -> None:
    with extra_gateway({"limits": {"qido_max_limit": 2}}) as gw:
        r = https.get(f"{gw.url}/dicom-web/studies?limit=1000", headers=auth(token))
        assert r.status_code == 200 and len(r.json()) == 2
        # Never cut silently (issue 14 finding 2): PS3.18 6.7.1.2 Warning, with the count.
        total = len(https.get(f"{stack['dicomweb_url']}/studies", headers=auth(token)).json())
        warning = r.headers["warning"]
        assert warning.startswith(f"299 {stack['resource']}/dicom-web: ")
        assert f"{total} results match" in warning
        for query in ("", "?limit=0"):
            r = https.get(f"{gw.url}/dicom-web/instances{query}", headers=auth(token))
            assert len(r.json()) == 2 and r.headers["warning"].startswith("299 ")
        # A limit the client chose is its own paging: no warning.
        r = https.get(f"{gw.url}/dicom-web/studies?limit=1", headers=auth(token))
        assert len(r.json()) == 1 and "warning" not in r.headers


@pytest.mark.control("AP-3")
def test_stow_size_cap_and_compression(
    stack: dict[str, Any], https: httpx.Client, archive_log: Any, token: str, extra_gateway: Any
) -> None:
    ds = new_instance(rows=256)
    ctype, body = multipart([part10(ds)])
    with extra_gateway({"limits": {"stow_max_bytes": 65536}}) as gw:
        mark = archive_log.mark()
        r = https.post(
            f"{gw.url}/dicom-web/studies",
            content=body,
            headers=auth(token) | {"Content-Type": ctype},
        )
        assert r.status_code == 413
        # Without a Content-Length (chunked), the cap still holds while reading.
        r = https.post(
            f"{gw.url}/dicom-web/studies",
            content=iter([body[:40000], body[40000:]]),
            headers=auth(token) | {"Content-Type": ctype},
        )
        assert r.status_code == 413
        r = https.post(
            f"{gw.url}/dicom-web/studies",
            content=b"\x1f\x8b" + bytes(30),
            headers=auth(token) | {"Content-Type": ctype, "Content-Encoding": "gzip"},
        )
        assert r.status_code == 415
        assert archive_log.since(mark) == []


@pytest.mark.control("AP-3")
def test_rate_limit(
    stack: dict[str, Any], https: httpx.Client, token: str, extra_gateway: Any
) -> None:
    with extra_gateway({"limits": {"requests_per_minute": 10}, "workers": 1}) as gw:
        statuses = [
            https.get(f"{gw.url}/dicom-web/studies", headers=auth(token)).status_code
            for _ in range(14)
        ]
        assert statuses[0] == 200 and 429 in statuses
        r = https.get(f"{gw.url}/dicom-web/studies", headers=auth(token))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


# ---------------------------------------------------------------- AP-4 / AP-6


@pytest.mark.control("AP-4")
def test_no_internal_urls(
    surface: dict[str, Any],
    https: httpx.Client,
    token: str,
    uids: dict[str, str],
    created: list[str],
) -> None:
    base = surface["dicomweb_url"]
    a, s, i = uids["A"], uids["A_series"], uids["A_instance"]
    for path in (
        "/studies",
        "/series",
        "/instances",
        f"/studies/{a}/metadata",
        f"/studies/{a}/series/{s}/metadata",
        f"/studies/{a}/series/{s}/instances/{i}/metadata",
    ):
        r = https.get(base + path, headers=auth(token))
        assert r.status_code == 200
        assert_no_leak(surface, r)
        if path.endswith("/metadata"):
            assert surface["resource"] in r.text  # BulkDataURIs point at the gateway
    ds = new_instance()
    created.append(ds.StudyInstanceUID)
    ctype, body = multipart([part10(ds)])
    r = https.post(base + "/studies", content=body, headers=auth(token) | {"Content-Type": ctype})
    assert r.status_code == 200
    assert_no_leak(surface, r)


@pytest.mark.control("AP-6")
def test_errors_are_safe(surface: dict[str, Any], https: httpx.Client, token: str) -> None:
    base = surface["dicomweb_url"]
    missing = "1.2.3.4.5.6.7.8.9"
    for method, url in (
        ("GET", f"{base}/studies/{missing}/metadata"),
        ("GET", f"{base}/studies/{missing}/series/{missing}"),
        ("GET", f"{surface['gateway_url']}/system"),
        ("PUT", f"{base}/studies"),
        ("GET", f"{base}/studies?limit=x"),
    ):
        r = https.request(method, url, headers=auth(token))
        assert 400 <= r.status_code < 500
        assert set(r.json()) <= {"error", "message", "request_id"}
        assert_no_leak(surface, r)


@pytest.mark.control("NW-2")
def test_no_plaintext(stack: dict[str, Any], https: httpx.Client, token: str) -> None:
    """HTTPS answers carry HSTS for at least a year; plain HTTP only redirects, empty-bodied."""
    r = https.get(f"{stack['dicomweb_url']}/studies", headers=auth(token))
    hsts = r.headers["strict-transport-security"]
    assert int(hsts.split("max-age=")[1].split(";")[0]) >= 31536000
    with httpx.Client(timeout=10, trust_env=False) as plain:
        r = plain.get(
            f"{stack['gateway_http_url']}/dicom-web/studies?PatientID=x", headers=auth(token)
        )
    assert r.status_code == 301 and r.content == b""
    assert r.headers["location"] == f"{stack['gateway_url']}/dicom-web/studies"
