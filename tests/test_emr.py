"""The EMR simulator and its launches (issue 19), and the researcher's de-identified viewer,
driven in Debian Chromium (docs/viewer.md, "Launch from the EMR").

- The clinician signs in at the EMR (same IdP, password + TOTP), clicks "View images": the
  viewer opens on exactly that study with a token narrowed to it (`study:<uid>`) and the image
  renders; editing the URL to another study the clinician could otherwise open is refused.
- "Open in Weasis" yields a `weasis://` URL of the documented shape whose token reads that study
  and nothing else through the gateway.
- trial-analyst opens the trial study in the viewer: no answer in the page's network log names
  the patient or a real UID.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import Page, Playwright, sync_playwright
from ztemr.weasis import parse
from ztstack import demo_data

from tests.identity_fixtures import CHROMIUM, CHROMIUM_ARGS
from tests.test_viewer import RECORD_CSP, REPORTS, Session, _claims, fresh_totp

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CT = demo_data.study("p001-ct-chest")
MR = demo_data.study("p001-mr-brain")  # the same patient: north-clinician may open it directly
TRIAL = demo_data.study("p003-ct-chest")


def _spki(url: str, ca: str) -> str:
    parts = urlsplit(url)
    pem = ssl.get_server_certificate(
        (parts.hostname or "localhost", parts.port or 443), ca_certs=ca
    )
    cert = x509.load_pem_x509_certificate(pem.encode())
    der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture
def browser(
    stack: dict[str, Any], playwright: Playwright, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Session]:
    """A fresh Chromium profile trusting the gateway, the IdP and the EMR (their leaves, each
    verified against the stack CA first); requests anywhere else are recorded and fail."""
    origins = [stack["gateway_url"], stack["idp_issuer"], stack["emr_url"]]
    spki = ",".join(_spki(u, stack["ca_cert"]) for u in origins)
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=CHROMIUM,
        args=[*CHROMIUM_ARGS, "--ignore-certificate-errors-spki-list=" + spki],
        headless=True,
        viewport={"width": 1400, "height": 900},
    )
    context.add_init_script(RECORD_CSP)
    page = context.pages[0] if context.pages else context.new_page()
    session = Session(stack, context, page)
    allowed = {_origin(u) for u in origins}

    def on_request(req: Any) -> None:
        if (
            not req.url.startswith(("data:", "blob:", "weasis:"))
            and _origin(req.url) not in allowed
        ):
            session.foreign.append(req.url)

    context.on("request", on_request)
    failed_before = request.session.testsfailed
    try:
        yield session
    finally:
        if request.session.testsfailed > failed_before:
            REPORTS.mkdir(exist_ok=True)
            for i, p in enumerate(context.pages):
                with contextlib.suppress(Exception):
                    p.screenshot(path=str(REPORTS / f"emr-failure-{request.node.name}-{i}.png"))
        context.close()
    assert session.foreign == [], f"requests left the deployment: {session.foreign}"


def emr_sign_in(session: Session, user: str) -> None:
    emr = session.stack["emr_url"]
    page = session.page
    page.goto(emr + "/")
    page.wait_for_selector("input[name=username]", timeout=60_000)
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", session.stack["users"][user]["password"])
    page.click("button[type=submit]")
    page.wait_for_selector("input[name=otp]", timeout=30_000)
    for _ in range(3):
        page.fill("input[name=otp]", fresh_totp(session.stack, user))
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: url.startswith(emr) or url.endswith("/otp"), timeout=30_000)
        if page.url.startswith(emr):
            break
    page.wait_for_selector("text=Imaging orders", timeout=30_000)


def viewer_user(page: Page, stack: dict[str, Any]) -> dict[str, Any]:
    key = f"oidc.user:{stack['idp_issuer']}:ohif-viewer"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            raw = page.evaluate("(k) => sessionStorage.getItem(k)", key)
            if raw:
                return dict(json.loads(raw))
        time.sleep(0.5)
    raise AssertionError("the launched viewer holds no signed-in user")


@pytest.mark.control("ID-9")
@pytest.mark.control("AP-1")
def test_emr_launch_opens_exactly_that_study_and_nothing_else(
    browser: Session, archive_log: Any
) -> None:
    emr_sign_in(browser, "north-clinician")
    orders = browser.page.inner_text("body")
    assert CT.accession_number in orders and "North, Alice" in orders
    with browser.context.expect_page() as opened:
        browser.page.click(f"a.view[href='/launch/viewer/{CT.study_instance_uid}']")
    viewer = Session(browser.stack, browser.context, opened.value)
    viewer.page.wait_for_url(f"{browser.stack['gateway_url']}/viewer**", timeout=90_000)
    stats = viewer.wait_for_image()
    assert stats["max"] - stats["min"] > 40
    claims = _claims(viewer_user(viewer.page, browser.stack)["access_token"])
    studies = [s for s in claims["scope"].split() if s.startswith("study:")]
    assert studies == [f"study:{CT.study_instance_uid}"], claims["scope"]
    viewer.screenshot("emr-launch-ct.png")
    assert viewer.csp_violations() == []

    # Editing the URL, even with a new launch parameter, to a study the clinician may
    # otherwise open: refused, and the archive is not asked for it.
    mark = archive_log.mark()
    gateway = browser.stack["gateway_url"]
    viewer.page.goto(
        f"{gateway}/viewer?StudyInstanceUIDs={MR.study_instance_uid}&launch={MR.study_instance_uid}"
    )
    alert = viewer.page.wait_for_selector(
        "#zt-viewer-alert[data-state=access-denied]", timeout=60_000
    )
    assert alert is not None and "Access denied" in alert.inner_text()
    again = _claims(viewer_user(viewer.page, browser.stack)["access_token"])
    assert [s for s in again["scope"].split() if s.startswith("study:")] == studies
    assert not [e.uri for e in archive_log.since(mark) if MR.study_instance_uid in e.uri]


@pytest.mark.control("ID-9")
def test_open_in_weasis_carries_a_token_for_that_study_only(
    browser: Session, https: httpx.Client
) -> None:
    emr_sign_in(browser, "north-clinician")
    browser.page.click(f"a.weasis[href='/launch/weasis/{CT.study_instance_uid}']")
    link = browser.page.wait_for_selector("a#weasis", timeout=60_000)
    assert link is not None
    url = str(link.get_attribute("href"))
    assert url.startswith("weasis://%24dicom%3Ars+--url+%22https%3A%2F%2F")
    parts = parse(url)
    assert parts["url"] == browser.stack["dicomweb_url"]
    assert parts["study"] == CT.study_instance_uid
    claims = _claims(parts["token"])
    assert [s for s in claims["scope"].split() if s.startswith("study:")] == [
        f"study:{CT.study_instance_uid}"
    ]
    assert (
        claims["exp"] - claims["iat"] <= 300 and claims["azp" if "azp" in claims else "client_id"]
    )
    headers = {"Authorization": f"Bearer {parts['token']}"}
    root = browser.stack["dicomweb_url"]
    read = https.get(f"{root}/studies/{CT.study_instance_uid}/metadata", headers=headers)
    assert read.status_code == 200 and len(read.json()) == demo_data.SLICES
    other = https.get(f"{root}/studies/{MR.study_instance_uid}/metadata", headers=headers)
    assert other.status_code in (403, 404)
    listed = https.get(f"{root}/studies", headers=headers).json()
    assert [s["0020000D"]["Value"][0] for s in listed] == [CT.study_instance_uid]


@pytest.mark.control("DA-1")
def test_researcher_sees_only_deidentified_attributes_in_the_network_log(
    browser: Session,
) -> None:
    responses: list[Any] = []
    browser.context.on("response", lambda r: responses.append(r))
    browser.sign_in("/", "trial-analyst")
    browser.page.wait_for_selector("text=1-1 of 1", timeout=60_000)  # one study listed
    listed = [
        s["0020000D"]["Value"][0]
        for r in responses
        if "/dicom-web/studies?" in r.url and r.status == 200
        for s in r.json()
    ]
    assert listed and all(u.startswith("2.25.") for u in listed), listed
    browser.page.goto(f"{browser.gateway}/viewer?StudyInstanceUIDs={listed[0]}")
    browser.wait_for_image()
    browser.screenshot("viewer-deidentified.png")
    forbidden = [
        TRIAL.patient.name,
        TRIAL.patient.patient_id,
        TRIAL.accession_number,
        TRIAL.patient.birth_date,
        TRIAL.study_instance_uid,
        TRIAL.series_instance_uid,
        TRIAL.sop_instance_uid(1),
    ]
    checked = 0
    for r in responses:
        if not r.url.startswith(browser.gateway + "/dicom-web/") and "/wado" not in r.url:
            continue
        body = b""
        with contextlib.suppress(Exception):
            body = r.body()
        checked += 1
        for value in forbidden:
            assert value.encode() not in body, (r.url, value)
    assert checked >= 4, f"only {checked} DICOMweb answers in the network log"
    assert browser.csp_violations() == []
