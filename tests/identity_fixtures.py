"""Identity fixtures for the end-to-end tests (loaded by tests/conftest.py via pytest_plugins).

`tokens` logs demo users and devices in against the running local IdP through
`dicomweb_cli` (the same scripted form posts a person would make) and caches the results.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

# A cached token is handed out only while it has this long left to live (access tokens live
# 300 s; a full run takes longer, and a test must never fail on a token that expired mid-run).
MIN_REMAINING_SECONDS = 90


class Tokens:
    """Obtains TokenSets from the IdP described by stack.json; cached per arguments while they
    have at least MIN_REMAINING_SECONDS to live, then obtained again."""

    def __init__(self, stack: dict[str, Any]) -> None:
        self.stack = stack
        self._cache: dict[tuple[Any, ...], Any] = {}

    def _fresh(self, key: tuple[Any, ...]) -> bool:
        token = self._cache.get(key)
        if token is None:
            return False
        expires = float(token.claims.get("exp", 0))
        return expires - time.time() >= MIN_REMAINING_SECONDS

    def user(
        self,
        name: str,
        scope: str = "openid user/ImagingStudy.rs",
        acr_values: str | None = None,
        max_age: int | None = None,
    ) -> Any:
        from dicomweb_cli import login_password

        key = ("user", name, scope, acr_values, max_age)
        if max_age is not None:  # freshness matters: never reuse
            return login_password(self.stack, name, scope, acr_values=acr_values, max_age=max_age)
        if not self._fresh(key):
            self._cache[key] = login_password(self.stack, name, scope, acr_values=acr_values)
        return self._cache[key]

    def user_dpop(self, name: str, scope: str, key: Any) -> Any:
        from dicomweb_cli import login_password

        return login_password(self.stack, name, scope, dpop_key=key)

    def device(self, client_id: str, scope: str) -> Any:
        from dicomweb_cli import client_credentials

        key = ("device", client_id, scope)
        if not self._fresh(key):
            self._cache[key] = client_credentials(self.stack, client_id, scope)
        return self._cache[key]


@pytest.fixture(scope="session")
def tokens(stack: dict[str, Any]) -> Tokens:
    return Tokens(stack)


def issue_enrolment_code(
    stack: dict[str, Any], user: str, by: str = "test-admin"
) -> dict[str, Any]:
    """An administrator's one-time enrolment code for `user` (`idp/local/enrol-code.js`):
    {"code", "id", "expires_at", "user"}; the IdP records the issue in its event log."""
    import json
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "idp" / "local" / "enrol-code.js"
    done = subprocess.run(
        ["node", str(script), "--run-dir", stack["run_dir"], "--user", user, "--by", by, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    issued: dict[str, Any] = json.loads(done.stdout)
    return issued


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _spki_pin(cert_pem: bytes) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): lets Chromium trust the IdP's certificate from
    the deployment CA without touching any system trust store (WebAuthn refuses TLS errors)."""
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def webauthn_login(
    stack: dict[str, Any],
    user: str,
    scope: str,
    acr_values: str,
    *,
    enrolment_code: str | None = None,
) -> Any:
    """Logs `user` in through the IdP's pages in Chromium with a CDP virtual authenticator
    holding the user's pre-registered credential, or (with an administrator's one-time
    `enrolment_code`, `node idp/local/enrol-code.js`) an empty authenticator that first
    registers a new key; returns the viewer client's TokenSet."""
    import base64
    import secrets
    import ssl
    import time
    from urllib.parse import parse_qs, urlencode, urlsplit

    from authlib.oauth2.rfc7636 import create_s256_code_challenge
    from dicomweb_cli.login import AuthorizationResult, exchange_code, redirect_uri_for
    from dicomweb_cli.stack import demo_credentials, discovery
    from playwright.sync_api import sync_playwright

    creds = demo_credentials(stack)["users"][user]
    meta = discovery(stack)
    redirect_uri = redirect_uri_for(stack, "ohif-viewer")
    verifier = secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(8)
    params = {
        "response_type": "code",
        "client_id": "ohif-viewer",
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "acr_values": acr_values,
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
        "resource": stack["resource"],
    }
    # Pin the IdP's and the gateway's certificates (the redirect to the gateway's callback is
    # intercepted, but Chromium checks the TLS of a listening gateway before that).
    pins = []
    for url in (stack["idp_issuer"], redirect_uri):
        parts = urlsplit(url)
        try:
            served = ssl.get_server_certificate((parts.hostname or "localhost", parts.port or 443))
        except OSError:  # nothing listening there (an IdP-only stack)
            continue
        pins.append(_spki_pin(served.encode()))
    pin = ",".join(pins)
    captured: list[str] = []
    cred = creds["webauthn"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                *CHROMIUM_ARGS,
                f"--ignore-certificate-errors-spki-list={pin}",
            ],
        )
        try:
            context = browser.new_context()
            page = context.new_page()

            # The code is read from the redirect to the client (routes cannot intercept a
            # redirect); only this test holds the PKCE verifier, so nobody else can redeem it.
            page.on(
                "request",
                lambda request: (
                    captured.append(request.url) if request.url.startswith(redirect_uri) else None
                ),
            )
            cdp = context.new_cdp_session(page)
            cdp.send("WebAuthn.enable")
            auth = cdp.send(
                "WebAuthn.addVirtualAuthenticator",
                {
                    "options": {
                        "protocol": "ctap2",
                        "transport": "usb",
                        "hasResidentKey": False,
                        "hasUserVerification": True,
                        "isUserVerified": True,
                        "automaticPresenceSimulation": True,
                    }
                },
            )
            if enrolment_code is None:
                raw_id = base64.urlsafe_b64decode(cred["credential_id"] + "==")
                cdp.send(
                    "WebAuthn.addCredential",
                    {
                        "authenticatorId": auth["authenticatorId"],
                        "credential": {
                            "credentialId": base64.b64encode(raw_id).decode(),
                            "isResidentCredential": False,
                            "rpId": cred["rp_id"],
                            "privateKey": cred["private_key_pkcs8"],
                            # The IdP refuses a counter that does not grow (cloned keys); each
                            # run's fresh virtual authenticator starts above any earlier run.
                            "signCount": int(time.time()),
                        },
                    },
                )
            page.goto(f"{meta['authorization_endpoint']}?{urlencode(params)}")
            page.fill('input[name="username"]', user)
            page.fill('input[name="password"]', creds["password"])
            page.click('button[type="submit"]')
            if enrolment_code is not None:
                page.click("text=Register a new security key")
                page.fill('input[name="enrolment_code"]', enrolment_code)
                page.click('button[type="submit"]')
            deadline = time.monotonic() + 30
            while not captured and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            assert captured, f"no redirect to the client; the browser is at {page.url}"

        finally:
            browser.close()
    query = {k: v[0] for k, v in parse_qs(urlsplit(captured[-1]).query).items()}
    assert query.get("state") == state, query
    result = AuthorizationResult(
        "ohif-viewer", redirect_uri, query["code"], verifier, stack["resource"]
    )
    return exchange_code(stack, result)
