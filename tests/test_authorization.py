"""Per-study authorization end to end (AP-1, DA-2, ID-3, ID-4), with real tokens from the IdP.

The matrix: (caller, token scopes, demo study, DICOMweb transaction) -> allowed or refused, over
every path a study can be reached by. The attack corpus (tests/attack-corpus/authz.yaml) runs
against every study a caller may not see: nothing of it comes back and the archive's own request
log shows no request for it. Expectations come from config/policy.yaml and the demo data table
in docs/internals.md; docs/policy.md explains them.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
import yaml
from pydicom.uid import generate_uid
from ztstack import demo_data, volume

from tests.conftest import decision_bound
from tests.dicom_parts import multipart, part10
from tests.identity_fixtures import webauthn_login

pytestmark = pytest.mark.e2e

CORPUS = yaml.safe_load((Path(__file__).parent / "attack-corpus" / "authz.yaml").read_text())
MFA, PWD, PHR = "urn:zt:acr:mfa", "urn:zt:acr:pwd", "urn:zt:acr:phr"
RS, C, D = "user/ImagingStudy.rs", "user/ImagingStudy.c", "user/ImagingStudy.d"
# The demo studies and the real-sized CT volume (ztstack/volume.py: North General, ZT-P001).
STUDIES = {s.key: s for s in (*demo_data.STUDIES, volume.VOLUME)}
ALL = frozenset(STUDIES)
NORTH = frozenset(
    {"p001-ct-chest", "p001-mr-brain", "p003-ct-chest", "p003-mr-brain", "p001-ct-head-volume"}
)
SOUTH = frozenset({"p002-ct-abdomen", "p002-mr-knee"})
SHARED = "p001-ct-chest"  # the one study of the narrowed token


@dataclass(frozen=True)
class Caller:
    """A demo user or device, the scopes it asks for, and what the demo policy lets it see."""

    name: str
    login: Callable[[Any, dict[str, Any]], Any]
    visible: frozenset[str]


def _user(name: str, scope: str, acr: str | None = None) -> Callable[[Any, dict[str, Any]], Any]:
    return lambda tokens, stack: tokens.user(name, f"openid {scope}", acr_values=acr)


def _device(client_id: str, scope: str) -> Callable[[Any, dict[str, Any]], Any]:
    return lambda tokens, stack: tokens.device(client_id, scope)


def _narrowed(tokens: Any, stack: dict[str, Any]) -> Any:
    uid = STUDIES[SHARED].study_instance_uid
    return tokens.user("north-clinician", f"openid {RS} study:{uid}")


CALLERS = {
    c.name: c
    for c in (
        Caller("north-clinician", _user("north-clinician", f"{RS} {C}"), NORTH),
        Caller("south-clinician", _user("south-clinician", RS), SOUTH),
        Caller("radiologist", _user("radiologist", RS), NORTH | SOUTH),
        Caller("researcher", _user("researcher", RS), frozenset({"p003-ct-chest"})),
        Caller("auditor", _user("auditor", f"{RS} {C} {D}"), frozenset()),
        Caller("admin", _user("admin", RS), frozenset()),
        Caller(
            "portal-patient",
            _user("portal-patient", "patient/ImagingStudy.rs"),
            frozenset({"p001-ct-chest", "p001-mr-brain", "p001-ct-head-volume"}),
        ),
        Caller("modality-ct1", _device("modality-ct1", "system/ImagingStudy.c"), frozenset()),
        Caller(
            "ai-node", _device("ai-node", "system/ImagingStudy.rs"), frozenset({"p003-ct-chest"})
        ),
        Caller("north-share-link", _narrowed, frozenset({SHARED})),
    )
}

# (transaction, method, path template, Accept) for every read path of one study.
RETRIEVE_MULTIPART = 'multipart/related; type="application/dicom"'
OCTETS = 'multipart/related; type="application/octet-stream"'
READS = [
    ("search_for_series", "{root}/studies/{S}/series", "application/dicom+json"),
    ("search_for_instances", "{root}/studies/{S}/series/{SE}/instances", "application/dicom+json"),
    ("retrieve_study", "{root}/studies/{S}", RETRIEVE_MULTIPART),
    ("retrieve_series", "{root}/studies/{S}/series/{SE}", RETRIEVE_MULTIPART),
    ("retrieve_instance", "{root}/studies/{S}/series/{SE}/instances/{I}", RETRIEVE_MULTIPART),
    ("retrieve_study_metadata", "{root}/studies/{S}/metadata", "application/dicom+json"),
    (
        "retrieve_series_metadata",
        "{root}/studies/{S}/series/{SE}/metadata",
        "application/dicom+json",
    ),
    ("retrieve_frames", "{root}/studies/{S}/series/{SE}/instances/{I}/frames/1", OCTETS),
    ("retrieve_rendered", "{root}/studies/{S}/series/{SE}/instances/{I}/rendered", "image/jpeg"),
    ("retrieve_bulkdata", "{root}/studies/{S}/series/{SE}/instances/{I}/bulk/7fe00010", OCTETS),
    (
        "retrieve_wado_uri",
        "/wado?requestType=WADO&studyUID={S}&seriesUID={SE}&objectUID={I}"
        "&contentType=application%2Fdicom",
        "*/*",
    ),
]


# ------------------------------------------------------------------------------ helpers


def bearer(token_set: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_set.access_token}"}


def send(
    https: httpx.Client, method: str, url: str, headers: dict[str, str], content: bytes = b""
) -> httpx.Response:
    """One request sent byte for byte (httpcore: no client-side normalisation of dot segments,
    encodings, double slashes or case); waits out rate limiting (429) instead of failing."""
    parts = httpx.URL(url)
    target = url.split(f"{parts.host}:{parts.port}", 1)[1] if parts.port else parts.raw_path
    core_url = httpcore.URL(
        scheme=b"https",
        host=parts.host.encode(),
        port=parts.port,
        target=target.encode() if isinstance(target, str) else target,
    )
    for _ in range(30):
        answer = _pool(https).request(
            method.encode(),
            core_url,
            headers=[(k.encode(), v.encode()) for k, v in headers.items()],
            content=content or None,
        )
        response = httpx.Response(answer.status, headers=answer.headers, content=answer.content)
        if response.status_code != 429:
            return response
        time.sleep(float(response.headers.get("Retry-After", "2")))
    raise AssertionError(f"still rate limited: {method} {url}")


_POOLS: dict[int, httpcore.ConnectionPool] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_pools() -> Iterator[None]:
    yield
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


def _pool(https: httpx.Client) -> httpcore.ConnectionPool:
    """A raw connection pool with the same trust as the `https` fixture (the deployment CA)."""
    key = id(https)
    if key not in _POOLS:
        transport = https._transport
        ssl_context = transport._pool._ssl_context  # type: ignore[attr-defined]
        _POOLS[key] = httpcore.ConnectionPool(ssl_context=ssl_context)
    return _POOLS[key]


def uids_of(key: str) -> tuple[str, str, str]:
    s = STUDIES[key]
    return s.study_instance_uid, s.series_instance_uid, s.sop_instance_uid(1)


def leaks(body: bytes, key: str, caller: Caller) -> list[str]:
    """Which identifiers of study `key` appear in a response body."""
    found = [uid for uid in uids_of(key) if uid.encode() in body]
    patient = STUDIES[key].patient.patient_id
    shared_patient = any(STUDIES[k].patient.patient_id == patient for k in caller.visible)
    if not shared_patient and patient.encode() in body:
        found.append(patient)
    return found


def archive_saw(entries: list[Any], key: str) -> list[str]:
    """Archive requests that asked for study `key`: its study UID anywhere, or one of its
    object UIDs in a retrieval path (owner look-ups by QIDO query are how the gateway finds
    the real owner, so object UIDs in a query string are expected)."""
    study_uid, series_uid, instance_uid = uids_of(key)
    hits = []
    for entry in entries:
        path = entry.uri.split("?", 1)[0]
        if study_uid in entry.uri or series_uid in path or instance_uid in path:
            hits.append(f"{entry.method} {entry.uri}")
    return hits


def returned_studies(response: httpx.Response) -> set[str]:
    if response.status_code != 200 or "json" not in response.headers.get("content-type", ""):
        return set()
    return {
        value for item in response.json() for value in item.get("0020000D", {}).get("Value", [])
    }


def token_for(tokens: Any, stack: dict[str, Any], caller: Caller) -> Any:
    return caller.login(tokens, stack)


# ------------------------------------------------------------------------------ the matrix


@pytest.mark.control("AP-1")
@pytest.mark.control("DA-2")
@pytest.mark.parametrize("caller_name", list(CALLERS))
def test_search_for_studies_returns_only_permitted(
    stack: dict[str, Any], https: httpx.Client, tokens: Any, archive_log: Any, caller_name: str
) -> None:
    caller = CALLERS[caller_name]
    headers = bearer(token_for(tokens, stack, caller)) | {"Accept": "application/dicom+json"}
    root = stack["dicomweb_url"]
    response = send(https, "GET", f"{root}/studies?limit=1000", headers)
    if caller.visible:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code in (200, 204, 403), response.text
    demo_uids = {s.study_instance_uid: k for k, s in STUDIES.items()}
    seen = {demo_uids[u] for u in returned_studies(response) if u in demo_uids}
    assert seen == set(caller.visible)
    total = response.headers.get("X-Total-Count")
    if total is not None:
        assert int(total) == len(returned_studies(response))


@pytest.mark.control("AP-1")
@pytest.mark.control("DA-2")
@pytest.mark.parametrize(("caller_name", "key"), [(c, k) for c in CALLERS for k in sorted(ALL)])
def test_read_matrix(
    stack: dict[str, Any],
    https: httpx.Client,
    tokens: Any,
    archive_log: Any,
    caller_name: str,
    key: str,
) -> None:
    caller = CALLERS[caller_name]
    headers = bearer(token_for(tokens, stack, caller))
    base = stack["gateway_url"]
    study_uid, series_uid, instance_uid = uids_of(key)
    allowed = key in caller.visible
    mismatches = []
    for transaction, template, accept in READS:
        path = template.format(root="/dicom-web", S=study_uid, SE=series_uid, I=instance_uid)
        mark = archive_log.mark()
        response = send(https, "GET", base + path, headers | {"Accept": accept})
        if allowed:
            if response.status_code != 200 or not response.content:
                mismatches.append(f"{transaction}: {response.status_code}, expected 200")
            continue
        if response.status_code not in (401, 403, 404):
            mismatches.append(f"{transaction}: {response.status_code}, expected 403/404")
        if leaks(response.content, key, caller):
            mismatches.append(f"{transaction}: body names {leaks(response.content, key, caller)}")
        saw = archive_saw(archive_log.since(mark), key)
        if saw:
            mismatches.append(f"{transaction}: archive was asked {saw}")
    assert not mismatches, f"{caller_name} on {key}:\n" + "\n".join(mismatches)


# ------------------------------------------------------------------------------ STOW / DELETE


def stow_body(
    key: str, new_study: bool, confidentiality: str | None = None
) -> tuple[bytes, str, str]:
    """A multipart/related STOW body with one new instance: in demo study `key`, or in a new
    study with the same patient and site (so ingest rules label it like `key`); with a
    Confidentiality Code (0040,1008) when given."""
    ds = demo_data.instance(STUDIES[key], 1)
    if confidentiality is not None:
        ds.ConfidentialityCode = confidentiality
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if new_study:
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.AccessionNumber = "ZT-E2E-" + uuid.uuid4().hex[:8]
    content_type, body = multipart([part10(ds)])
    return body, content_type, str(ds.StudyInstanceUID)


def stow(
    https: httpx.Client,
    stack: dict[str, Any],
    token: Any,
    key: str,
    new_study: bool,
    into_path: bool = False,
    confidentiality: str | None = None,
) -> tuple[httpx.Response, str]:
    body, content_type, study_uid = stow_body(key, new_study, confidentiality)
    url = stack["dicomweb_url"] + (f"/studies/{study_uid}" if into_path else "/studies")
    headers = bearer(token) | {"Content-Type": content_type, "Accept": "application/dicom+json"}
    return send(https, "POST", url, headers, body), study_uid


@pytest.mark.control("AP-1")
@pytest.mark.parametrize(
    ("caller_name", "key", "into_path"),
    [
        ("north-clinician", "p002-ct-abdomen", False),  # other site
        ("north-clinician", "p002-ct-abdomen", True),
        ("north-clinician", "p004-ct-head", False),  # VIP
        ("north-share-link", "p001-mr-brain", False),  # outside the study: scope
        ("auditor", "p001-ct-chest", False),
        ("radiologist", "p001-ct-chest", False),  # no .c scope asked for
        ("modality-ct1", "p002-mr-knee", False),  # legal hold is frozen
        ("modality-ct1", "p002-mr-knee", True),
    ],
)
def test_stow_into_a_study_the_caller_may_not_write(
    stack: dict[str, Any],
    https: httpx.Client,
    tokens: Any,
    archive_log: Any,
    caller_name: str,
    key: str,
    into_path: bool,
) -> None:
    token = token_for(tokens, stack, CALLERS[caller_name])
    mark = archive_log.mark()
    response, _ = stow(https, stack, token, key, new_study=False, into_path=into_path)
    assert response.status_code in (401, 403, 404, 409), response.text
    assert not [e for e in archive_log.since(mark) if e.method == "POST"]


@pytest.mark.control("AP-1")
@pytest.mark.control("ID-3")
@pytest.mark.control("ID-4")
@pytest.mark.control("DA-2")
def test_modality_stores_never_reads_back_and_delete_needs_fresh_mfa(
    stack: dict[str, Any], https: httpx.Client, tokens: Any, archive_log: Any
) -> None:
    modality = tokens.device("modality-ct1", "system/ImagingStudy.c")
    response, study_uid = stow(https, stack, modality, "p002-ct-abdomen", new_study=True)
    assert response.status_code == 200, response.text
    root = stack["dicomweb_url"]
    # the device cannot read back what it stored
    read = send(https, "GET", f"{root}/studies/{study_uid}/metadata", bearer(modality))
    assert read.status_code in (401, 403)
    # the ingest rules labelled it site:south at once: the south clinician sees it
    south = tokens.user("south-clinician", f"openid {RS}")
    assert (
        send(https, "GET", f"{root}/studies/{study_uid}/metadata", bearer(south)).status_code == 200
    )
    north = tokens.user("north-clinician", f"openid {RS} {C}")
    assert (
        send(https, "GET", f"{root}/studies/{study_uid}/metadata", bearer(north)).status_code == 403
    )

    # DELETE: the .d scope, MFA, a fresh login; never the legal-hold study
    weak = tokens.user("radiologist", f"openid {RS} {D}")
    assert weak.claims.get("acr") == PWD
    denied = send(https, "DELETE", f"{root}/studies/{study_uid}", bearer(weak))
    assert denied.status_code == 401
    challenge = denied.headers["WWW-Authenticate"]
    assert 'error="insufficient_user_authentication"' in challenge
    assert f'acr_values="{MFA}' in challenge and 'max_age="300"' in challenge
    fresh = tokens.user("radiologist", f"openid {RS} {D}", acr_values=MFA, max_age=300)
    assert fresh.claims.get("acr") in (MFA, "urn:zt:acr:phr")
    hold_uid = STUDIES["p002-mr-knee"].study_instance_uid
    mark = archive_log.mark()
    held = send(https, "DELETE", f"{root}/studies/{hold_uid}", bearer(fresh))
    assert held.status_code == 403
    assert not archive_saw(archive_log.since(mark), "p002-mr-knee")
    deleted = send(https, "DELETE", f"{root}/studies/{study_uid}", bearer(fresh))
    assert deleted.status_code in (200, 202, 204), deleted.text
    assert send(
        https, "GET", f"{root}/studies/{study_uid}/metadata", bearer(south)
    ).status_code in (
        403,
        404,
    )


# ------------------------------------------------------------------------------ VIP, break-glass


@pytest.mark.control("DA-2")
@pytest.mark.control("ID-3")
@pytest.mark.control("ID-4")
def test_break_glass_opens_one_vip_study_for_a_limited_time(
    stack: dict[str, Any], https: httpx.Client, tokens: Any, archive_log: Any
) -> None:
    root, base = stack["dicomweb_url"], stack["gateway_url"]
    granted, other = STUDIES["p004-ct-head"], STUDIES["p004-mr-spine"]
    er = tokens.user("er-physician", f"openid {RS}", acr_values=MFA, max_age=300)
    accept = {"Accept": "application/dicom+json"}
    mark = archive_log.mark()
    before = send(https, "GET", f"{root}/studies/{other.study_instance_uid}/metadata", bearer(er))
    assert before.status_code == 403
    assert not archive_saw(archive_log.since(mark), "p004-mr-spine")

    # an ordinary clinician may not break the glass; a weak login is challenged (RFC 9470)
    body = {"study_instance_uid": granted.study_instance_uid, "reason": "unconscious patient, ER"}
    clinician = tokens.user("north-clinician", f"openid {RS}", acr_values=MFA, max_age=300)
    assert (
        send(
            https,
            "POST",
            f"{base}/admin/break-glass",
            bearer(clinician) | {"Content-Type": "application/json"},
            _json(body),
        ).status_code
        == 403
    )
    weak = tokens.user("er-physician", f"openid {RS}")
    refused = send(
        https,
        "POST",
        f"{base}/admin/break-glass",
        bearer(weak) | {"Content-Type": "application/json"},
        _json(body),
    )
    assert refused.status_code == 401
    assert 'error="insufficient_user_authentication"' in refused.headers["WWW-Authenticate"]
    short = send(
        https,
        "POST",
        f"{base}/admin/break-glass",
        bearer(er) | {"Content-Type": "application/json"},
        _json({"study_instance_uid": granted.study_instance_uid, "reason": "x"}),
    )
    assert short.status_code == 400

    grant = send(
        https,
        "POST",
        f"{base}/admin/break-glass",
        bearer(er) | {"Content-Type": "application/json"},
        _json(body),
    )
    assert grant.status_code == 201, grant.text
    assert grant.json()["study_instance_uid"] == granted.study_instance_uid
    assert 0 < grant.json()["expires_in"] <= 3600
    opened = send(
        https, "GET", f"{root}/studies/{granted.study_instance_uid}/metadata", bearer(er) | accept
    )
    assert opened.status_code == 200
    # the grant is for that study only, and the VIP read still needs MFA
    still = send(https, "GET", f"{root}/studies/{other.study_instance_uid}/metadata", bearer(er))
    assert still.status_code == 403
    weak_read = send(
        https, "GET", f"{root}/studies/{granted.study_instance_uid}/metadata", bearer(weak)
    )
    assert weak_read.status_code == 401
    assert f'acr_values="{MFA}' in weak_read.headers["WWW-Authenticate"]


def _challenge_params(response: httpx.Response) -> dict[str, str]:
    """The auth-params of a `Bearer` challenge (RFC 6750 section 3, quoted strings)."""
    header = response.headers["WWW-Authenticate"]
    assert header.startswith("Bearer ")
    return dict(re.findall(r'([a-z_]+)="([^"]*)"', header))


@pytest.mark.control("ID-3")
@pytest.mark.browser
def test_restricted_study_needs_a_phishing_resistant_login(
    stack: dict[str, Any], https: httpx.Client, tokens: Any, archive_log: Any
) -> None:
    """Policy `phr-for-restricted` (OMB M-22-09): a study labelled `restricted` is searched,
    read and deleted only with WebAuthn (`urn:zt:acr:phr`); a fresh TOTP login (`mfa`) gets the
    RFC 9470 challenge and the archive is never asked for the study."""
    modality = tokens.device("modality-ct1", "system/ImagingStudy.c")
    stored, uid = stow(https, stack, modality, "p001-ct-chest", new_study=True, confidentiality="R")
    assert stored.status_code == 200, stored.text
    root = stack["dicomweb_url"]
    accept = {"Accept": "application/dicom+json"}
    metadata, search = f"{root}/studies/{uid}/metadata", f"{root}/studies?StudyInstanceUID={uid}"

    totp = tokens.user("radiologist", f"openid {RS} {D}", acr_values=MFA, max_age=300)
    assert totp.claims["acr"] == MFA
    mark = archive_log.mark()
    for method, url in (("GET", metadata), ("DELETE", f"{root}/studies/{uid}")):
        refused = send(https, method, url, bearer(totp) | accept)
        assert refused.status_code == 401, (method, refused.text)
        challenge = _challenge_params(refused)
        assert challenge["error"] == "insufficient_user_authentication"
        assert challenge["acr_values"].split() == [PHR], challenge
        assert uid.encode() not in refused.content
    listed = send(https, "GET", search, bearer(totp) | accept)
    assert uid not in returned_studies(listed)
    time.sleep(1)  # a straggling forward would be logged by now
    asked = [f"{e.method} {e.uri}" for e in archive_log.since(mark) if uid in e.uri]
    assert asked == [], f"the archive was asked for the restricted study: {asked}"

    # The same radiologist with the security key (WebAuthn in Chromium): searched, read, deleted.
    phr = webauthn_login(stack, "radiologist", f"openid {RS} {D}", PHR)
    assert phr.claims["acr"] == PHR
    assert uid in returned_studies(send(https, "GET", search, bearer(phr) | accept))
    read = send(https, "GET", metadata, bearer(phr) | accept)
    assert read.status_code == 200 and uid.encode() in read.content
    deleted = send(https, "DELETE", f"{root}/studies/{uid}", bearer(phr))
    assert deleted.status_code in (200, 202, 204), deleted.text
    assert send(https, "GET", metadata, bearer(phr) | accept).status_code in (403, 404)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.control("DA-2")
def test_label_change_needs_admin_and_rejects_bad_input(
    stack: dict[str, Any], https: httpx.Client, tokens: Any
) -> None:
    base = stack["gateway_url"]
    uid = STUDIES["p003-mr-brain"].study_instance_uid
    admin = tokens.user("admin", "openid", acr_values=MFA, max_age=300)
    json_headers = bearer(admin) | {"Content-Type": "application/json"}
    for path, body in (
        (f"/admin/studies/{uid}/labels", {"add": ["top-secret"], "reason": "test"}),
        ("/admin/studies/1.2.*/labels", {"add": ["vip"], "reason": "test"}),
    ):
        assert send(https, "PATCH", base + path, json_headers, _json(body)).status_code == 400
    clinician = tokens.user("north-clinician", f"openid {RS}", acr_values=MFA, max_age=300)
    refused = send(
        https,
        "PATCH",
        f"{base}/admin/studies/{uid}/labels",
        bearer(clinician) | {"Content-Type": "application/json"},
        _json({"add": ["vip"], "reason": "test"}),
    )
    assert refused.status_code == 403
    state = send(https, "GET", f"{base}/admin/studies/{uid}", bearer(admin))
    assert state.status_code == 200
    assert state.json()["labels"] == ["site:north"]
    # a label change takes effect at once: add `research:trial-42`, the researcher sees it
    added = send(
        https,
        "PATCH",
        f"{base}/admin/studies/{uid}/labels",
        json_headers,
        _json({"add": ["research:trial-42"], "reason": "added to the trial (e2e)"}),
    )
    assert added.status_code == 200, added.text
    researcher = tokens.user("researcher", f"openid {RS}")
    url = f"{stack['dicomweb_url']}/studies/{uid}/metadata"
    try:
        assert send(https, "GET", url, bearer(researcher)).status_code == 200
    finally:
        removed = send(
            https,
            "PATCH",
            f"{base}/admin/studies/{uid}/labels",
            json_headers,
            _json({"remove": ["research:trial-42"], "reason": "e2e clean-up"}),
        )
        assert removed.status_code == 200
    # The edge may serve a decision it cached before the change for at most its bound (AP-8);
    # then the read is refused, and stays refused.
    deadline = time.monotonic() + decision_bound(stack) + 2
    while send(https, "GET", url, bearer(researcher)).status_code != 403:
        assert time.monotonic() < deadline, "the label removal did not apply within the bound"
        time.sleep(0.5)
    assert send(https, "GET", url, bearer(researcher)).status_code == 403


# ------------------------------------------------------------------------------ attack corpus

CORPUS_CALLERS = ["north-clinician", "researcher", "portal-patient", "north-share-link"]


def _allowed_study(caller: Caller) -> str:
    return SHARED if SHARED in caller.visible else sorted(caller.visible)[0]


@pytest.fixture(scope="module", params=["orthanc", "dicomweb"])
def corpus_gateway(request: pytest.FixtureRequest, stack: dict[str, Any]) -> Iterator[str]:
    """The gateway the corpus attacks, once per archive adapter (issue 17): the stack's own
    (`archive.kind: orthanc`), then one with `archive.kind: dicomweb` in front of the same
    Orthanc's `/dicom-web` root, sharing the stack's policy store and index."""
    if request.param == "orthanc":
        yield stack["gateway_url"]
        return
    from tests.conftest import gateway_process

    overrides = {
        "archive": {"kind": "dicomweb", "url": stack["archive"]["http_url"] + "/dicom-web"}
    }
    with gateway_process(stack, overrides) as gw:
        yield gw.url


@pytest.mark.control("AP-1")
@pytest.mark.parametrize("caller_name", CORPUS_CALLERS)
@pytest.mark.parametrize("attack", CORPUS["attacks"], ids=[a["id"] for a in CORPUS["attacks"]])
def test_attack_corpus(
    stack: dict[str, Any],
    https: httpx.Client,
    tokens: Any,
    archive_log: Any,
    corpus_gateway: str,
    caller_name: str,
    attack: dict[str, str],
) -> None:
    caller = CALLERS[caller_name]
    headers = bearer(token_for(tokens, stack, caller)) | {"Accept": "*/*"}
    a_study, a_series, a_instance = uids_of(_allowed_study(caller))
    visible_uids = {STUDIES[k].study_instance_uid for k in caller.visible}
    failures = []
    for victim in sorted(ALL - caller.visible):
        b_study, b_series, b_instance = uids_of(victim)
        path = attack["path"].format(
            root="/dicom-web",
            A=a_study,
            A_series=a_series,
            A_instance=a_instance,
            B=b_study,
            B_series=b_series,
            B_instance=b_instance,
            B_pct="".join(f"%{ord(ch):02X}" for ch in b_study),
            B_prefix=b_study[:-4],
            B_patient=STUDIES[victim].patient.patient_id,
        )
        mark = archive_log.mark()
        response = send(https, "GET", corpus_gateway + path, headers)
        problems = []
        if attack["expect"] == "denied" and not 400 <= response.status_code < 500:
            problems.append(f"status {response.status_code}")
        if attack["expect"] == "filtered":
            extra = returned_studies(response) - visible_uids
            if extra:
                problems.append(f"returned studies {sorted(extra)}")
        leaked = leaks(response.content, victim, caller)
        if leaked:
            problems.append(f"body names {leaked}")
        saw = archive_saw(archive_log.since(mark), victim)
        if saw:
            problems.append(f"archive asked {saw}")
        if problems:
            failures.append(f"{victim} {path}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)
