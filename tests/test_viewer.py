"""The OHIF viewer behind the gateway, driven in Debian Chromium (docs/viewer.md).

Chromium trusts the deployment only through `--ignore-certificate-errors-spki-list` with the
SPKI hashes of the gateway's and the IdP's certificates, each verified against the stack CA
first (a fresh profile per test); nothing else is relaxed. Every page load records
Content-Security-Policy violations and requests to other origins; each test asserts there were
none.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from dicomweb_cli.login import next_totp
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from pydicom.uid import generate_uid
from ztstack import demo_data
from ztstack.dicom_objects import file_meta, part10

from tests.dicom_parts import multipart
from tests.identity_fixtures import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "reports"
MFA, PHR = "urn:zt:acr:mfa", "urn:zt:acr:phr"

# Catches violations before any page script runs (init scripts are exempt from the page CSP).
RECORD_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => window.__cspViolations.push(
  {directive: e.effectiveDirective, blocked: e.blockedURI, source: e.sourceFile}));
"""
CANVAS_STATS = """
() => {
  let best = null;
  for (const c of document.querySelectorAll('canvas')) {
    if (c.width < 64 || c.height < 64) continue;
    const ctx = c.getContext('2d');
    if (!ctx) continue;
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let min = 255, max = 0, sum = 0, n = 0;
    for (let i = 0; i < d.length; i += 16) {
      const v = (d[i] + d[i + 1] + d[i + 2]) / 3;
      min = Math.min(min, v); max = Math.max(max, v); sum += v; n++;
    }
    const stats = {width: c.width, height: c.height, min, max, mean: sum / n};
    if (!best || stats.max - stats.min > best.max - best.min) best = stats;
  }
  return best;
}
"""


# --- demo data (the same deterministic UIDs the seed uploaded) ---------------------------


def studies_where(pred: Any) -> set[str]:
    return {s.study_instance_uid for s in demo_data.STUDIES if pred(s)}


DEMO_STUDIES = studies_where(lambda s: True)
NORTH_PERMITTED = studies_where(
    lambda s: s.patient.institution == demo_data.NORTH and s.patient.patient_id != "ZT-P004"
)
NORTH_CT = demo_data.study("p001-ct-chest")
SOUTH_CT = demo_data.study("p002-ct-abdomen")
VIP_CT = demo_data.study("p004-ct-head")
VIP_MR = demo_data.study("p004-mr-spine")


def orthanc_id(*uids: str) -> str:
    """Orthanc's resource identifier: SHA-1 of the identifying UIDs, in 5 dashed groups."""
    h = hashlib.sha1("|".join(uids).encode()).hexdigest()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def archive_names_of(study: demo_data.Study) -> set[str]:
    """Every name the archive could be asked for this study by: DICOM UIDs and Orthanc IDs."""
    pid, st, se = study.patient.patient_id, study.study_instance_uid, study.series_instance_uid
    names = {st, se, orthanc_id(pid, st), orthanc_id(pid, st, se)}
    for n in range(1, demo_data.SLICES + 1):
        sop = study.sop_instance_uid(n)
        names |= {sop, orthanc_id(pid, st, se, sop)}
    return names


# --- browser -------------------------------------------------------------------------------


def spki_hashes(stack: dict[str, Any]) -> list[str]:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the gateway's and the IdP's certificates.

    Chromium's allow-list matches server (leaf) keys only, so each leaf is fetched from its
    server and verified against the deployment CA first: only what that CA issued is trusted.
    """
    hashes = []
    for url in (stack["gateway_url"], stack["idp_issuer"]):
        parts = urlsplit(url)
        pem = ssl.get_server_certificate(
            (parts.hostname or "localhost", parts.port or 443), ca_certs=stack["ca_cert"]
        )
        cert = x509.load_pem_x509_certificate(pem.encode())
        der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        hashes.append(base64.b64encode(hashlib.sha256(der).digest()).decode())
    return hashes


@dataclass
class Session:
    """One Chromium profile on the viewer, with what its pages did."""

    stack: dict[str, Any]
    context: BrowserContext
    page: Page
    foreign: list[str] = field(default_factory=list)
    responses: list[tuple[int, str]] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return str(self.stack["gateway_url"])

    def csp_violations(self) -> list[Any]:
        return list(self.page.evaluate("window.__cspViolations || []"))

    def sign_in(self, path: str, user: str, second_factor: str = "otp") -> None:
        """Open `path` on the gateway and complete the IdP's login (the viewer redirects)."""
        creds = self.stack["users"][user]
        self.page.goto(self.gateway + path)
        self.page.wait_for_selector("input[name=username]", timeout=60_000)
        self.page.fill("input[name=username]", user)
        self.page.fill("input[name=password]", creds["password"])
        self.page.click("button[type=submit]")
        if second_factor == "otp":
            self.page.wait_for_selector("input[name=otp]", timeout=30_000)
            self.enter_totp(user)
        self.page.wait_for_url(self.gateway + "/**", timeout=60_000)

    def enter_totp(self, user: str) -> None:
        """Submit a TOTP code; if another login in this run used that step, use the next."""
        for _ in range(3):
            self.page.fill("input[name=otp]", fresh_totp(self.stack, user))
            self.page.click("button[type=submit]")
            self.page.wait_for_url(
                lambda url: url.startswith(self.gateway) or url.endswith("/otp"), timeout=30_000
            )
            if self.page.url.startswith(self.gateway):
                return
        raise AssertionError("the IdP refused three TOTP codes")

    def user(self) -> dict[str, Any]:
        """The signed-in user as oidc-client-ts stores it (same origin, sessionStorage)."""
        key = f"oidc.user:{self.stack['idp_issuer']}:ohif-viewer"
        raw = self.page.evaluate("(k) => sessionStorage.getItem(k)", key)
        assert raw, "the viewer holds no signed-in user"
        return dict(json.loads(raw))

    def access_claims(self) -> dict[str, Any]:
        return _claims(self.user()["access_token"])

    def wait_for_image(self, timeout: float = 90.0) -> dict[str, Any]:
        """Poll the viewport canvases until one shows a non-uniform image."""
        deadline = time.monotonic() + timeout
        stats: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            try:
                stats = self.page.evaluate(CANVAS_STATS)
            except PlaywrightError as e:
                # The viewer reloads the study after a grant or a step-up: poll the new page.
                if "context was destroyed" not in str(e):
                    raise
                self.page.wait_for_load_state()
                continue
            if stats and stats["max"] - stats["min"] > 40:
                return stats
            time.sleep(1)
        raise AssertionError(f"no rendered image within {timeout} s (last canvas: {stats})")

    def screenshot(self, name: str) -> Path:
        REPORTS.mkdir(exist_ok=True)
        path = REPORTS / name
        self.page.screenshot(path=str(path))
        return path


def fresh_totp(stack: dict[str, Any], user: str) -> str:
    """A TOTP code for a time step not used yet in this test process (the IdP refuses a
    replayed step); shared with dicomweb_cli's scripted logins."""
    return next_totp(stack["idp_issuer"], user, stack["users"][user]["totp_secret"])


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture
def viewer(
    stack: dict[str, Any], playwright: Playwright, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Session]:
    args = [*CHROMIUM_ARGS, "--ignore-certificate-errors-spki-list=" + ",".join(spki_hashes(stack))]
    # A persistent context is the fresh user-data-dir the SPKI allow-list needs.
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=CHROMIUM,
        args=args,
        headless=True,
        viewport={"width": 1400, "height": 900},
    )
    context.add_init_script(RECORD_CSP)
    page = context.pages[0] if context.pages else context.new_page()
    session = Session(stack, context, page)
    allowed = {_origin(stack["gateway_url"]), _origin(stack["idp_issuer"])}

    def on_request(request: Any) -> None:
        url = request.url
        if not url.startswith(("data:", "blob:")) and _origin(url) not in allowed:
            session.foreign.append(url)

    context.on("request", on_request)
    context.on("response", lambda r: session.responses.append((r.status, r.url)))
    # A Playwright trace of every step; kept under reports/ only when the test failed
    # (open it with `playwright show-trace reports/viewer-failure-<test>.zip`).
    context.tracing.start(screenshots=True, snapshots=True)
    failed_before = request.session.testsfailed
    try:
        yield session
    finally:
        # The call phase's report is logged before teardown: a higher count means it failed.
        if request.session.testsfailed > failed_before:
            REPORTS.mkdir(exist_ok=True)
            name = f"viewer-failure-{request.node.name}"
            with contextlib.suppress(Exception):
                page.screenshot(path=str(REPORTS / f"{name}.png"))
            context.tracing.stop(path=str(REPORTS / f"{name}.zip"))
        else:
            context.tracing.stop()
        context.close()
    assert session.foreign == [], f"requests left the deployment: {session.foreign}"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.control("AP-1")
@pytest.mark.control("ID-3")
@pytest.mark.control("NW-2")
def test_clinician_sees_exactly_permitted_studies_and_a_ct_renders(viewer: Session) -> None:
    searches: list[Any] = []
    viewer.page.on(
        "response",
        lambda r: searches.append(r) if "/dicom-web/studies?" in r.url else None,
    )
    viewer.sign_in("/", "north-clinician")
    viewer.page.wait_for_selector(f"text={NORTH_CT.accession_number}", timeout=60_000)
    time.sleep(1)
    claims = viewer.access_claims()
    assert claims["acr"] == MFA and "otp" in claims["amr"]
    assert claims["aud"] in (viewer.stack["resource"], [viewer.stack["resource"]])

    listed: set[str] = set()
    for response in searches:
        assert response.status == 200
        listed |= {s["0020000D"]["Value"][0] for s in response.json()}
    # The session's stack is shared: other tests STOW studies of their own. Of the demo
    # studies, exactly the permitted ones are listed; nothing else the seed stored shows up.
    assert listed & DEMO_STUDIES == NORTH_PERMITTED
    text = viewer.page.inner_text("body")
    for s in demo_data.STUDIES:
        shown = s.accession_number in text
        assert shown == (s.study_instance_uid in NORTH_PERMITTED), s.key
    viewer.screenshot("viewer-study-list.png")

    viewer.page.goto(f"{viewer.gateway}/viewer?StudyInstanceUIDs={NORTH_CT.study_instance_uid}")
    stats = viewer.wait_for_image()
    assert stats["max"] - stats["min"] > 40
    _dismiss_tour(viewer.page)
    viewer.screenshot("viewer-ct.png")
    assert viewer.csp_violations() == []
    # Issue 13: the edge speaks HTTP/2 to the browser, for the page and every DICOMweb fetch
    # (OHIF is no longer held to six frames at a time per origin).
    protocols = viewer.page.evaluate(
        """() => [performance.getEntriesByType('navigation')[0].nextHopProtocol,
                  ...performance.getEntriesByType('resource')
                      .filter(e => e.name.includes('/dicom-web/'))
                      .map(e => e.nextHopProtocol)]"""
    )
    assert len(protocols) > 1 and set(protocols) == {"h2"}, protocols


@pytest.mark.browser
@pytest.mark.control("AP-1")
def test_direct_link_to_other_site_is_denied_and_archive_never_asked(
    viewer: Session, archive_log: Any
) -> None:
    viewer.sign_in("/", "north-clinician")
    viewer.page.wait_for_selector(f"text={NORTH_CT.accession_number}", timeout=60_000)
    mark = archive_log.mark()
    viewer.page.goto(f"{viewer.gateway}/viewer?StudyInstanceUIDs={SOUTH_CT.study_instance_uid}")
    alert = viewer.page.wait_for_selector(
        "#zt-viewer-alert[data-state=access-denied]", timeout=60_000
    )
    assert alert is not None and "Access denied" in alert.inner_text()
    refused = [
        (status, url)
        for status, url in viewer.responses
        if SOUTH_CT.study_instance_uid in url and "/dicom-web/studies/" in url
    ]
    assert refused and all(status in (403, 404) for status, _ in refused)
    time.sleep(2)  # let any straggling request reach the archive before looking
    names = archive_names_of(SOUTH_CT)
    touched = [e for e in archive_log.since(mark) if any(n in e.uri for n in names)]
    assert touched == [], f"the archive was asked for the refused study: {touched}"
    assert SOUTH_CT.patient.name.split("^")[0] not in viewer.page.inner_text("#root")
    viewer.screenshot("viewer-access-denied.png")
    assert viewer.csp_violations() == []


def _add_virtual_authenticator(viewer: Session, webauthn: dict[str, str]) -> None:
    """Chromium's virtual authenticator holding the radiologist's pre-registered credential."""
    cdp = viewer.context.new_cdp_session(viewer.page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "usb",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )

    def std_b64(value: str) -> str:
        return base64.b64encode(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))).decode()

    cdp.send(
        "WebAuthn.addCredential",
        {
            "authenticatorId": added["authenticatorId"],
            "credential": {
                "credentialId": std_b64(webauthn["credential_id"]),
                "isResidentCredential": False,
                "rpId": webauthn["rp_id"],
                "privateKey": webauthn["private_key_pkcs8"],
                "userHandle": std_b64(webauthn["user_handle"]),
                # The IdP refuses an assertion whose counter does not grow (a cloned key) and
                # keeps the highest counter it saw, also from earlier logins of this run
                # (tests/identity_fixtures.py starts at the clock): start above all of them.
                "signCount": int(time.time()),
            },
        },
    )


def stow_restricted_study(stack: dict[str, Any], https: Any, tokens: Any) -> str:
    """Stores one CT slice as a new North General study with Confidentiality Code R, sent by
    the CT modality; the ingest rules label it `site:north` and `restricted`, and policy
    `phr-for-restricted` lets only a phishing-resistant login search or read it."""
    ds = demo_data.instance(NORTH_CT, 1)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    file_meta(ds)
    ds.AccessionNumber = "ZT-E2E-" + uuid.uuid4().hex[:8]
    ds.ConfidentialityCode = "R"
    content_type, body = multipart([part10(ds)])
    modality = tokens.device("modality-ct1", "system/ImagingStudy.c")
    stored = https.post(
        f"{stack['dicomweb_url']}/studies",
        content=body,
        headers={
            "Authorization": f"Bearer {modality.access_token}",
            "Content-Type": content_type,
            "Accept": "application/dicom+json",
        },
    )
    assert stored.status_code == 200, stored.text
    return str(ds.StudyInstanceUID)


@pytest.mark.browser
@pytest.mark.control("ID-3")
def test_webauthn_sign_in_reaches_phishing_resistant_level(
    viewer: Session, https: Any, tokens: Any
) -> None:
    """A restricted study needs `urn:zt:acr:phr` (policy `phr-for-restricted`): the radiologist's
    TOTP session gets the RFC 9470 challenge, the viewer signs in again and the IdP asks for the
    security key (Chromium's virtual authenticator), then the same study renders."""
    restricted = stow_restricted_study(viewer.stack, https, tokens)
    viewer.sign_in("/", "radiologist")
    viewer.page.wait_for_selector(f"text={NORTH_CT.accession_number}", timeout=60_000)
    assert viewer.access_claims()["acr"] == MFA
    _add_virtual_authenticator(viewer, viewer.stack["users"]["radiologist"]["webauthn"])

    challenges: list[str] = []
    viewer.page.on(
        "response",
        lambda r: (
            challenges.append(r.headers.get("www-authenticate", ""))
            if r.status == 401 and restricted in r.url
            else None
        ),
    )
    # Inside the running viewer, as a click in the study list does.
    viewer.page.evaluate(
        """(uid) => { history.pushState({}, '', '/viewer?StudyInstanceUIDs=' + uid);
                      dispatchEvent(new PopStateEvent('popstate')); }""",
        restricted,
    )
    # The new sign-in asks for the password again (prompt=login), then the security key; the
    # IdP's page starts the WebAuthn assertion itself and the virtual authenticator answers.
    viewer.page.wait_for_selector("input[name=username]", timeout=60_000)
    assert challenges and f'acr_values="{PHR}"' in challenges[0]
    viewer.page.fill("input[name=username]", "radiologist")
    viewer.page.fill("input[name=password]", viewer.stack["users"]["radiologist"]["password"])
    viewer.page.click("button[type=submit]")
    viewer.page.wait_for_url(lambda url: url.startswith(viewer.gateway), timeout=60_000)
    stats = viewer.wait_for_image()
    assert stats["max"] - stats["min"] > 40
    assert f"StudyInstanceUIDs={restricted}" in viewer.page.url
    claims = viewer.access_claims()
    assert claims["acr"] == PHR
    assert {"hwk", "swk"} & set(claims["amr"]) and "otp" not in claims["amr"]
    viewer.screenshot("viewer-phishing-resistant.png")
    assert viewer.csp_violations() == []


# Access tokens a sign-out test left behind, checked once they expire by the module's last test
# (the tests in between use the up to five minutes of waiting).
SIGNED_OUT_ACCESS_TOKENS: list[str] = []


@pytest.mark.browser
@pytest.mark.control("ID-7")
def test_sign_out_revokes_tokens(viewer: Session, https: Any) -> None:
    SIGNED_OUT_ACCESS_TOKENS.append(_sign_in_and_out(viewer, https))


def _sign_in_and_out(viewer: Session, https: Any) -> str:
    """Signs north-clinician in and out in the viewer; proves both tokens are revoked at the
    IdP and the IdP session is gone; returns the old access token (still a valid JWT)."""
    viewer.sign_in("/", "north-clinician")
    viewer.page.wait_for_selector(f"text={NORTH_CT.accession_number}", timeout=60_000)
    user = viewer.user()
    access, refresh = user["access_token"], user["refresh_token"]  # renewal uses the refresh token
    dicomweb = viewer.stack["dicomweb_url"]
    bearer = {"Authorization": f"Bearer {access}"}
    assert https.get(f"{dicomweb}/studies", headers=bearer).status_code == 200

    revocations: list[Any] = []
    viewer.page.on(
        "response", lambda r: revocations.append(r) if r.url.endswith("/revocation") else None
    )
    landed: list[str] = []
    viewer.page.on(
        "framenavigated",
        lambda frame: landed.append(frame.url) if frame == viewer.page.main_frame else None,
    )
    viewer.page.goto(viewer.gateway + "/logout")
    # The IdP's end-session page: the viewer has already revoked both tokens (RFC 7009).
    viewer.page.click("button[name=logout]", timeout=60_000)
    # The IdP sends the browser back to the viewer (post_logout_redirect_uri), which holds no
    # user any more and so starts a new sign-in at once: the IdP session is gone too, it asks
    # for the password again. (Reading the page between those two navigations would race.)
    viewer.page.wait_for_selector("input[name=username]", timeout=60_000)
    assert any(u.startswith(viewer.gateway) and urlsplit(u).path == "/" for u in landed), landed
    assert [r.status for r in revocations] == [200, 200]
    # The tab's sessionStorage for the gateway origin, read on a page that does not redirect.
    viewer.page.goto(viewer.gateway + "/break-glass")
    key = f"oidc.user:{viewer.stack['idp_issuer']}:ohif-viewer"
    assert viewer.page.evaluate("(k) => sessionStorage.getItem(k)", key) is None

    discovery = https.get(viewer.stack["idp_issuer"] + "/.well-known/openid-configuration").json()
    answer = https.post(
        discovery["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": refresh, "client_id": "ohif-viewer"},
        headers={"Origin": viewer.gateway},
    )
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    return str(access)


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _vip_study_without_grant(viewer: Session, https: Any) -> demo_data.Study:
    """A VIP study the signed-in user cannot open yet.

    Break-glass grants last an hour (`break_glass.duration_seconds`) and the session's stack is
    shared: the audit and authorization tests grant er-physician the VIP CT head through the
    API. Ask the gateway (with the viewer's own MFA token) which VIP study is still closed.
    """
    bearer = {"Authorization": f"Bearer {viewer.user()['access_token']}"}
    for study in (VIP_CT, VIP_MR):
        url = f"{viewer.stack['dicomweb_url']}/studies/{study.study_instance_uid}/metadata"
        status = https.get(url, headers=bearer).status_code
        if status in (403, 404):
            return study
        assert status == 200, (study.key, status)
    raise AssertionError(
        "er-physician holds break-glass grants for every VIP study (they last an hour): "
        "run the browser tests against a fresh stack"
    )


def _dismiss_tour(page: Page) -> None:
    skip = page.query_selector("text=Skip all")
    if skip is not None:
        skip.click()
        time.sleep(0.5)


@pytest.mark.browser
@pytest.mark.control("DA-2")
def test_break_glass_opens_a_vip_study_after_reason_and_fresh_mfa(
    viewer: Session, https: Any
) -> None:
    viewer.sign_in("/", "er-physician")
    viewer.page.wait_for_selector(f"text={NORTH_CT.accession_number}", timeout=60_000)
    first_login = viewer.access_claims()["auth_time"]
    vip = _vip_study_without_grant(viewer, https)
    viewer.page.goto(f"{viewer.gateway}/viewer?StudyInstanceUIDs={vip.study_instance_uid}")
    viewer.page.click("#zt-viewer-alert[data-state=access-denied] a", timeout=60_000)
    viewer.page.wait_for_url(f"{viewer.gateway}/break-glass?**")
    viewer.page.fill("#reason", "Unconscious patient in the emergency room, prior CT needed")
    grants: list[Any] = []
    viewer.page.on(
        "response", lambda r: grants.append(r) if r.url.endswith("/admin/break-glass") else None
    )
    viewer.page.click("#submit")
    # The fresh MFA sign-in (prompt=login, max_age=0) the break-glass page asked for.
    viewer.page.wait_for_selector("input[name=username]", timeout=60_000)
    viewer.page.fill("input[name=username]", "er-physician")
    viewer.page.fill("input[name=password]", viewer.stack["users"]["er-physician"]["password"])
    viewer.page.click("button[type=submit]")
    viewer.page.wait_for_selector("input[name=otp]", timeout=30_000)
    viewer.enter_totp("er-physician")
    stats = viewer.wait_for_image()
    assert stats["max"] - stats["min"] > 40
    assert [g.status for g in grants] == [201]
    claims = viewer.access_claims()
    assert claims["acr"] == MFA and claims["auth_time"] >= first_login
    assert f"StudyInstanceUIDs={vip.study_instance_uid}" in viewer.page.url
    viewer.screenshot("viewer-break-glass.png")
    assert viewer.csp_violations() == []


@pytest.mark.browser
@pytest.mark.control("DA-2")
def test_break_glass_page_needs_a_valid_study_and_reason(viewer: Session) -> None:
    viewer.page.goto(f"{viewer.gateway}/break-glass?study=not-a-uid")
    assert viewer.page.is_hidden("#break-glass-form")
    assert "No valid study" in viewer.page.inner_text("#message")
    viewer.page.goto(f"{viewer.gateway}/break-glass?study={VIP_CT.study_instance_uid}")
    viewer.page.fill("#reason", "short")
    viewer.page.click("#submit")
    assert "at least 10" in viewer.page.inner_text("#message")
    assert viewer.page.url.startswith(f"{viewer.gateway}/break-glass")
    stored = viewer.page.evaluate("sessionStorage.getItem('zt-break-glass')")
    assert stored is None
    assert viewer.csp_violations() == []


def _directives(csp: str) -> dict[str, list[str]]:
    out = {}
    for part in csp.split(";"):
        name, *sources = part.split()
        out[name] = sources
    return out


@pytest.mark.control("NW-2")
def test_viewer_response_headers(stack: dict[str, Any], https: Any) -> None:
    gateway = stack["gateway_url"]
    index = https.get(gateway + "/")
    assert index.status_code == 200 and 'id="root"' in index.text
    bundle = next(
        p for p in index.text.split('"') if p.startswith("/app.bundle.") and p.endswith(".js")
    )
    answers = {
        "/": (index, "no-cache"),
        "/viewer?StudyInstanceUIDs=1.2.3": (
            https.get(gateway + "/viewer?StudyInstanceUIDs=1.2.3"),
            "no-cache",
        ),
        "/app-config.js": (https.get(gateway + "/app-config.js"), "no-cache"),
        bundle: (https.get(gateway + bundle), "public, max-age=31536000, immutable"),
        "/break-glass": (https.get(gateway + "/break-glass"), "no-cache"),
    }
    for path, (r, cache) in answers.items():
        assert r.status_code == 200, path
        assert r.headers["cache-control"] == cache, path
        hsts = dict(
            p.strip().partition("=")[::2] for p in r.headers["strict-transport-security"].split(";")
        )
        assert int(hsts["max-age"]) >= 31536000, path
        assert r.headers["x-content-type-options"] == "nosniff", path
        csp = _directives(r.headers["content-security-policy"])
        assert csp["default-src"] == ["'none'"], path
        assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"], path
        assert "'unsafe-inline'" not in csp["script-src"], path
        assert "'unsafe-eval'" not in csp["script-src"], path
        assert csp["connect-src"] == ["'self'", _origin(stack["idp_issuer"])], path
    config = answers["/app-config.js"][0].text
    assert f'"{gateway}"' in config and "response_type: 'code'" in config
    # The API prefixes never fall back to the viewer.
    for path in ("/dicom-web/nothing", "/admin/nothing", "/.well-known/nothing"):
        r = https.get(gateway + path)
        assert r.status_code == 404 and "<html" not in r.text, path
    # Plain HTTP carries no viewer data: a redirect with an empty body.
    plain = httpx.get(stack["gateway_http_url"] + "/viewer", follow_redirects=False)
    assert plain.status_code in (301, 308) and plain.content == b""
    assert plain.headers["location"].startswith(gateway)


@pytest.mark.browser
@pytest.mark.control("ID-3")
def test_step_up_signs_in_again_and_returns_to_the_same_study(
    viewer: Session, tokens: Any, https: Any
) -> None:
    """A VIP read needs MFA (policy `mfa-for-vip`): a password-only session gets the RFC 9470
    challenge, the viewer signs in again at that level and comes back to the study."""
    # The break-glass grant makes the VIP study readable at all (it needs a fresh MFA login).
    # The CT head: the API tests grant it anyway, so the MR spine stays closed for the
    # break-glass test whatever the order.
    mfa = tokens.user("er-physician", acr_values=MFA, max_age=0)
    grant = https.post(
        viewer.stack["gateway_url"] + "/admin/break-glass",
        json={
            "study_instance_uid": VIP_CT.study_instance_uid,
            "reason": "step-up browser test: emergency review",
        },
        headers={"Authorization": f"Bearer {mfa.access_token}"},
    )
    assert grant.status_code == 201, grant.text
    # Start below the required level: a password-only viewer session.
    viewer.page.goto(viewer.gateway + "/break-glass")
    viewer.page.evaluate(
        "() => sessionStorage.setItem('zt-step-up', JSON.stringify({acr_values: 'urn:zt:acr:pwd'}))"
    )
    viewer.sign_in("/", "er-physician", second_factor="none")
    viewer.page.wait_for_selector(f"text={NORTH_CT.accession_number}", timeout=60_000)
    assert viewer.access_claims()["acr"] == "urn:zt:acr:pwd"

    challenges: list[Any] = []
    viewer.page.on(
        "response",
        lambda r: (
            challenges.append(r)
            if r.status == 401
            and "insufficient_user_authentication" in r.headers.get("www-authenticate", "")
            else None
        ),
    )
    # Open the study inside the running viewer (as a click in the app does; a full page load
    # would start a new sign-in with the viewer's default level instead of meeting the gateway's
    # challenge).
    viewer.page.evaluate(
        """(uid) => { history.pushState({}, '', '/viewer?StudyInstanceUIDs=' + uid);
                      dispatchEvent(new PopStateEvent('popstate')); }""",
        VIP_CT.study_instance_uid,
    )
    # The viewer's step-up: the IdP asks for the second factor (and the password if it wants).
    viewer.page.wait_for_selector("input[name=otp], input[name=username]", timeout=60_000)
    assert challenges and 'acr_values="urn:zt:acr:mfa' in challenges[0].headers["www-authenticate"]
    if viewer.page.query_selector("input[name=username]") is not None:
        viewer.page.fill("input[name=username]", "er-physician")
        viewer.page.fill("input[name=password]", viewer.stack["users"]["er-physician"]["password"])
        viewer.page.click("button[type=submit]")
        viewer.page.wait_for_selector("input[name=otp]", timeout=30_000)
    viewer.enter_totp("er-physician")
    stats = viewer.wait_for_image()
    assert stats["max"] - stats["min"] > 40
    assert f"StudyInstanceUIDs={VIP_CT.study_instance_uid}" in viewer.page.url
    assert viewer.access_claims()["acr"] == MFA
    assert viewer.csp_violations() == []


# Keep this test last in the module: it waits for the access token of the sign-out test above.
@pytest.mark.browser
@pytest.mark.timeout(600)
@pytest.mark.control("ID-7")
def test_signed_out_access_token_stops_working_at_expiry(viewer: Session, https: Any) -> None:
    """A JWT access token is checked locally by the gateway, so revocation cannot reach it: it
    stops working at its expiry (5 minutes at most, ID-7)."""
    if SIGNED_OUT_ACCESS_TOKENS:
        access = SIGNED_OUT_ACCESS_TOKENS.pop()
    else:  # run on its own: sign in and out first
        access = _sign_in_and_out(viewer, https)
    bearer = {"Authorization": f"Bearer {access}"}
    url = f"{viewer.stack['dicomweb_url']}/studies"
    exp = _claims(access)["exp"]
    assert exp - time.time() <= 300
    time.sleep(max(0.0, exp - time.time()) + 31)  # leeway_seconds: 30
    answer = https.get(url, headers=bearer)
    assert answer.status_code == 401
    assert "invalid_token" in answer.headers["www-authenticate"]


@pytest.mark.browser
@pytest.mark.control("AP-2")
def test_worklist_search_for_an_apostrophe_name(viewer: Session, https: Any, tokens: Any) -> None:
    """Issue 14 finding 3: an OHIF worklist search for "O'Brien" lists the study (it was 400)."""
    stack = viewer.stack
    ds = demo_data.instance(NORTH_CT, 1)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    file_meta(ds)
    ds.PatientID = "ZT-E2E-OB-" + uuid.uuid4().hex[:6]
    ds.PatientName = "O'Brien^Siobhan"
    ds.AccessionNumber = "ZT-OB-" + uuid.uuid4().hex[:8]
    content_type, body = multipart([part10(ds)])
    modality = tokens.device("modality-ct1", "system/ImagingStudy.c")
    stored = https.post(
        f"{stack['dicomweb_url']}/studies",
        content=body,
        headers={
            "Authorization": f"Bearer {modality.access_token}",
            "Content-Type": content_type,
        },
    )
    assert stored.status_code == 200, stored.text
    responses: list[Any] = []
    viewer.page.on("response", lambda r: responses.append(r) if "/dicom-web/" in r.url else None)
    viewer.sign_in("/", "north-clinician")
    viewer.page.wait_for_selector(f"text={NORTH_CT.accession_number}", timeout=60_000)
    # The worklist's first text filter is the patient name. OHIF 3.13 filters a list that fits
    # one page (101 studies) in the browser, and asks the server otherwise: both are checked.
    # The patient-name filter: the left-most text input of the filter row (it has no label).
    viewer.page.evaluate(
        """() => {
          const inputs = [...document.querySelectorAll('input')]
            .filter(i => i.type === 'text' && i.getBoundingClientRect().width > 0);
          inputs.sort((a, b) => a.getBoundingClientRect().left - b.getBoundingClientRect().left);
          inputs[0].setAttribute('data-zt', 'patient-filter');
        }"""
    )
    name_filter = viewer.page.locator("input[data-zt=patient-filter]")
    name_filter.click()
    name_filter.press_sequentially("O'Brien", delay=50)
    viewer.page.wait_for_selector(f"text={ds.AccessionNumber}", timeout=60_000)
    viewer.page.wait_for_selector(f"text={NORTH_CT.accession_number}", state="detached")
    # The server-side search, as OHIF's DICOMweb client writes it, from the page with the
    # viewer's own token (it was 400 before issue 14).
    token = viewer.user()["access_token"]
    answer = viewer.page.evaluate(
        """async ([token]) => {
          const q = 'PatientName=' + encodeURIComponent("*O'Brien*") +
            '&limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060';
          const r = await fetch('/dicom-web/studies?' + q,
            {headers: {Authorization: 'Bearer ' + token, Accept: 'application/dicom+json'}});
          return {status: r.status, body: await r.json()};
        }""",
        [token],
    )
    assert answer["status"] == 200, answer
    assert ds.StudyInstanceUID in {s["0020000D"]["Value"][0] for s in answer["body"]}
    for study in answer["body"]:
        assert study["00100010"]["Value"][0]["Alphabetic"].upper().startswith("O'BRIEN")
    assert all(r.status < 400 for r in responses), [(r.status, r.url) for r in responses]
    viewer.screenshot("viewer-worklist-obrien.png")
    assert viewer.csp_violations() == []
