"""Identity controls proven at the IdP (ID-2, ID-3 IdP half, ID-7, ID-9) and its bad-input
handling, against the running local provider of the `stack` fixture.

Everything goes through the IdP's public endpoints and its own login pages, as a browser or
the CLI would; nothing is mocked.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import yaml
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from dicomweb_cli import (
    OAuthError,
    authorize,
    client_credentials,
    decode_header,
    exchange_code,
    generate_key,
    login_password,
    refresh,
    revoke,
    thumbprint,
)
from dicomweb_cli.login import AuthorizationResult, next_totp, redirect_uri_for
from dicomweb_cli.stack import discovery, http_client

from tests.identity_fixtures import issue_enrolment_code, webauthn_login

pytestmark = pytest.mark.e2e

REALM = Path(__file__).resolve().parent.parent / "idp" / "realm.yaml"
GENERIC_ERROR = "Sign-in failed. Check your user name, password or code and try again."
ACR_PWD, ACR_MFA, ACR_PHR = "urn:zt:acr:pwd", "urn:zt:acr:mfa", "urn:zt:acr:phr"
OTHER_RESOURCE = "https://reporting.invalid"


@pytest.fixture(scope="module")
def oidc(stack: dict[str, Any]) -> dict[str, Any]:
    return discovery(stack)


@pytest.fixture
def idp(stack: dict[str, Any]) -> httpx.Client:
    with http_client(stack) as client:
        yield client


def _login_page(idp: httpx.Client, oidc: dict[str, Any], stack: dict[str, Any]) -> httpx.Response:
    """Starts a code flow for the viewer and returns the IdP's login page."""
    params = {
        "response_type": "code",
        "client_id": "ohif-viewer",
        "redirect_uri": redirect_uri_for(stack, "ohif-viewer"),
        "scope": "openid",
        "state": secrets.token_urlsafe(8),
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    }
    r = idp.get(f"{oidc['authorization_endpoint']}?{urlencode(params)}")
    while r.is_redirect:
        r = idp.get(httpx.URL(str(r.request.url)).join(r.headers["location"]))
    assert r.status_code == 200 and 'name="password"' in r.text
    return r


def _post_form(idp: httpx.Client, page: httpx.Response, fields: dict[str, str]) -> httpx.Response:
    action = page.text.split('action="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    return idp.post(httpx.URL(str(page.request.url)).join(action), data=fields)


# --- discovery and token shape (the identity contract) ----------------------------------


@pytest.mark.control("ID-9")
def test_discovery_advertises_only_the_hardened_profile(
    stack: dict[str, Any], oidc: dict[str, Any]
) -> None:
    assert oidc["issuer"] == stack["idp_issuer"]
    assert urlsplit(oidc["issuer"]).path == "/realms/dicomweb"
    assert oidc["response_types_supported"] == ["code"]
    assert oidc["code_challenge_methods_supported"] == ["S256"]
    assert "password" not in oidc["grant_types_supported"]
    assert "implicit" not in oidc["grant_types_supported"]
    assert oidc["acr_values_supported"] == [ACR_PWD, ACR_MFA, ACR_PHR]
    assert "ES256" in oidc["dpop_signing_alg_values_supported"]
    assert oidc["revocation_endpoint"].startswith(oidc["issuer"])


@pytest.mark.control("ID-1")
def test_access_token_follows_rfc9068(stack: dict[str, Any], tokens: Any) -> None:
    t = tokens.user("north-clinician")
    header = decode_header(t.access_token)
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256" and header["kid"]
    c = t.claims
    assert c["iss"] == stack["idp_issuer"]
    assert c["aud"] == stack["resource"]
    assert c["sub"] == "north-clinician" and c["client_id"] == "ohif-viewer"
    assert c["scope"] == "user/ImagingStudy.rs"
    assert c["realm_access"]["roles"] == ["clinician"] and c["groups"] == ["/site-north"]
    assert c["acr"] == ACR_PWD and c["amr"] == ["pwd"] and isinstance(c["auth_time"], int)
    assert c["jti"] and "cnf" not in c


@pytest.mark.control("AP-1")
def test_patient_claim_and_study_scope(stack: dict[str, Any], tokens: Any) -> None:
    uid = "1.2.826.0.1.3680043.8.498.1"
    t = tokens.user("portal-patient", scope=f"openid patient/ImagingStudy.rs study:{uid}")
    assert t.claims["patient"] == "ZT-P001"
    assert t.claims["scope"].split() == ["patient/ImagingStudy.rs", f"study:{uid}"]


@pytest.mark.control("ID-9")
def test_device_token_via_private_key_jwt(stack: dict[str, Any], tokens: Any) -> None:
    t = tokens.device("modality-ct1", "system/ImagingStudy.c")
    assert t.claims["sub"] == "modality-ct1" and t.claims["client_id"] == "modality-ct1"
    assert t.claims["aud"] == stack["resource"] and t.claims["scope"] == "system/ImagingStudy.c"
    assert t.refresh_token is None
    # A device cannot widen its scopes.
    with pytest.raises(OAuthError) as e:
        client_credentials(stack, "modality-ct1", "system/ImagingStudy.rs")
    assert e.value.error == "invalid_scope"


@pytest.mark.control("ID-5")
def test_dpop_bound_tokens_for_the_cli(stack: dict[str, Any], tokens: Any) -> None:
    key = generate_key()
    t = tokens.user_dpop("radiologist", "openid user/ImagingStudy.rs", key)
    assert t.token_type == "DPoP"
    assert t.claims["cnf"]["jkt"] == thumbprint(key) and t.claims["client_id"] == "dicomweb-cli"
    # The CLI client never gets an unbound token.
    result = authorize(
        stack, "radiologist", "openid user/ImagingStudy.rs", client_id="dicomweb-cli"
    )
    with pytest.raises(OAuthError) as e:
        exchange_code(stack, result, None)
    assert e.value.error == "invalid_grant"


# --- ID-2 -----------------------------------------------------------------------------------


@pytest.mark.control("ID-2")
def test_token_for_another_resource_carries_another_audience(stack: dict[str, Any]) -> None:
    key = generate_key()
    other = login_password(
        stack, "researcher", "openid user/ImagingStudy.rs", dpop_key=key, resource=OTHER_RESOURCE
    )
    gateway = login_password(stack, "researcher", "openid user/ImagingStudy.rs", dpop_key=key)
    assert other.claims["aud"] == OTHER_RESOURCE
    assert gateway.claims["aud"] == stack["resource"]
    assert other.claims["aud"] != gateway.claims["aud"]
    # A client not registered for that resource cannot get a token for it at all.
    with pytest.raises(OAuthError) as e:
        login_password(stack, "researcher", "openid user/ImagingStudy.rs", resource=OTHER_RESOURCE)
    assert e.value.error == "invalid_target"


# --- ID-3 (IdP half) ------------------------------------------------------------------------


@pytest.mark.control("ID-3")
def test_totp_login_yields_the_otp_level(tokens: Any) -> None:
    pwd = tokens.user("south-clinician")
    mfa = tokens.user("south-clinician", acr_values=ACR_MFA)
    assert pwd.claims["acr"] == ACR_PWD and pwd.claims["amr"] == ["pwd"]
    assert mfa.claims["acr"] == ACR_MFA
    assert {"pwd", "otp"} <= set(mfa.claims["amr"])


@pytest.mark.control("ID-3")
def test_level_a_user_cannot_reach_is_refused(stack: dict[str, Any]) -> None:
    with pytest.raises(OAuthError) as e:  # researcher has no second factor enrolled
        login_password(stack, "researcher", "openid", acr_values=ACR_MFA)
    assert e.value.error == "unmet_authentication_requirements"


@pytest.mark.control("ID-3")
@pytest.mark.browser
def test_webauthn_login_in_chromium_yields_the_phishing_resistant_level(
    stack: dict[str, Any],
) -> None:
    token_set = webauthn_login(stack, "radiologist", "openid user/ImagingStudy.rs", ACR_PHR)
    assert token_set.claims["acr"] == ACR_PHR
    assert {"hwk", "user"} <= set(token_set.claims["amr"])
    assert token_set.claims["sub"] == "radiologist"


def _start(
    browser: httpx.Client, stack: dict[str, Any], oidc: dict[str, Any], **extra: str
) -> tuple[httpx.Response, str, str]:
    """Starts a viewer code flow in `browser` (its cookies are the session); returns the first
    page shown, or the redirect to the client, with the PKCE verifier and state."""
    verifier, state = secrets.token_urlsafe(48), secrets.token_urlsafe(8)
    params = {
        "response_type": "code",
        "client_id": "ohif-viewer",
        "redirect_uri": redirect_uri_for(stack, "ohif-viewer"),
        "scope": "openid user/ImagingStudy.rs",
        "state": state,
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
        **extra,
    }
    first = browser.get(f"{oidc['authorization_endpoint']}?{urlencode(params)}")
    return _follow(browser, first, stack), verifier, state


def _follow(browser: httpx.Client, r: httpx.Response, stack: dict[str, Any]) -> httpx.Response:
    while r.is_redirect and not r.headers["location"].startswith(stack["gateway_url"]):
        r = browser.get(httpx.URL(str(r.request.url)).join(r.headers["location"]))
    return r


def _exchange(stack: dict[str, Any], r: httpx.Response, verifier: str) -> dict[str, Any]:
    query = parse_qs(urlsplit(r.headers["location"]).query)
    redirect_uri = redirect_uri_for(stack, "ohif-viewer")
    result = AuthorizationResult(
        "ohif-viewer", redirect_uri, query["code"][0], verifier, stack["resource"]
    )
    return exchange_code(stack, result).claims


@pytest.mark.control("ID-3")
def test_step_up_asks_only_for_the_missing_factor(
    stack: dict[str, Any], oidc: dict[str, Any]
) -> None:
    user = "er-physician"
    creds = stack["users"][user]
    with http_client(stack) as browser:
        page, verifier, _ = _start(browser, stack, oidc)
        form = {"username": user, "password": creds["password"]}
        r = _follow(browser, _post_form(browser, page, form), stack)
        assert _exchange(stack, r, verifier)["acr"] == ACR_PWD
        # Same session, higher level requested: only the one-time code is asked for.
        page, verifier, _ = _start(browser, stack, oidc, acr_values=ACR_MFA)
        assert 'name="otp"' in page.text and 'name="password"' not in page.text
        code = next_totp(oidc["issuer"], user, creds["totp_secret"])
        r = _follow(browser, _post_form(browser, page, {"otp": code}), stack)
        claims = _exchange(stack, r, verifier)
        assert claims["acr"] == ACR_MFA and claims["sub"] == user
        # A level already reached is not asked again; max_age=0 forces a fresh login.
        r, verifier, _ = _start(browser, stack, oidc, acr_values=ACR_MFA)
        assert r.is_redirect and _exchange(stack, r, verifier)["acr"] == ACR_MFA
        page, _, _ = _start(browser, stack, oidc, max_age="0")
        assert 'name="password"' in page.text


@pytest.mark.control("ID-10")
@pytest.mark.browser
def test_a_key_enrolled_with_an_admin_code_signs_in_at_the_phishing_resistant_level(
    stack: dict[str, Any],
) -> None:
    issued = issue_enrolment_code(stack, "radiologist")
    token_set = webauthn_login(
        stack,
        "radiologist",
        "openid user/ImagingStudy.rs",
        ACR_PHR,
        enrolment_code=issued["code"],
    )
    assert token_set.claims["acr"] == ACR_PHR and token_set.claims["sub"] == "radiologist"


# --- ID-7 -----------------------------------------------------------------------------------


@pytest.mark.control("ID-7")
def test_revoked_refresh_token_mints_nothing(stack: dict[str, Any]) -> None:
    t = login_password(stack, "auditor", "openid offline_access user/ImagingStudy.rs")
    assert t.refresh_token
    revoke(stack, t)
    with pytest.raises(OAuthError) as e:
        refresh(stack, t)
    assert e.value.error == "invalid_grant"


@pytest.mark.control("ID-7")
def test_refresh_tokens_rotate_and_reuse_revokes_the_chain(stack: dict[str, Any]) -> None:
    first = login_password(stack, "admin", "openid user/ImagingStudy.rs")
    second = refresh(stack, first)
    assert second.refresh_token and second.refresh_token != first.refresh_token
    with pytest.raises(OAuthError) as e:  # the spent token is refused ...
        refresh(stack, first)
    assert e.value.error == "invalid_grant"
    with pytest.raises(OAuthError) as e:  # ... and its reuse revoked the whole grant
        refresh(stack, second)
    assert e.value.error == "invalid_grant"


@pytest.mark.control("ID-7")
def test_access_tokens_live_at_most_five_minutes(stack: dict[str, Any], tokens: Any) -> None:
    user = login_password(stack, "er-physician", "openid user/ImagingStudy.rs")
    device = tokens.device("ai-node", "system/ImagingStudy.rs")
    refreshed = refresh(stack, user)
    for t in (user, device, refreshed):
        assert 0 < t.claims["exp"] - t.claims["iat"] <= 300
        assert t.expires_in <= 300


# --- ID-9 -----------------------------------------------------------------------------------


@pytest.mark.control("ID-9")
def test_password_grant_is_refused(stack: dict[str, Any], oidc: dict[str, Any], idp: Any) -> None:
    creds = stack["users"]["north-clinician"]
    for client_id in ("ohif-viewer", "dicomweb-cli"):
        r = idp.post(
            oidc["token_endpoint"],
            data={
                "grant_type": "password",
                "client_id": client_id,
                "username": "north-clinician",
                "password": creds["password"],
                "scope": "openid",
            },
        )
        assert r.status_code == 400
        assert r.json()["error"] == "unsupported_grant_type"
        assert "access_token" not in r.text


@pytest.mark.control("ID-9")
@pytest.mark.parametrize("response_type", ["token", "id_token token", "id_token", "code token"])
def test_implicit_flow_is_refused(
    stack: dict[str, Any], oidc: dict[str, Any], idp: Any, response_type: str
) -> None:
    params = {
        "response_type": response_type,
        "client_id": "ohif-viewer",
        "redirect_uri": redirect_uri_for(stack, "ohif-viewer"),
        "scope": "openid user/ImagingStudy.rs",
        "nonce": "n",
        "state": "s",
    }
    r = idp.get(f"{oidc['authorization_endpoint']}?{urlencode(params)}")
    assert r.status_code in (302, 303, 400)
    answer = r.headers.get("location", "") + r.text
    assert "unsupported_response_type" in answer
    assert "access_token=" not in answer and "id_token=" not in answer


@pytest.mark.control("ID-9")
def test_code_flow_without_pkce_is_refused(stack: dict[str, Any]) -> None:
    with pytest.raises(OAuthError) as e:  # no code_challenge at the authorization endpoint
        authorize(stack, "researcher", "openid user/ImagingStudy.rs", pkce=False)
    assert e.value.error == "invalid_request"
    result = authorize(stack, "researcher", "openid user/ImagingStudy.rs")
    with pytest.raises(OAuthError) as e:  # a code exchanged without its code_verifier
        exchange_code(stack, result, code_verifier=None)
    assert e.value.error == "invalid_grant"
    result = authorize(stack, "researcher", "openid user/ImagingStudy.rs")
    with pytest.raises(OAuthError) as e:  # or with the wrong one
        exchange_code(stack, result, code_verifier=secrets.token_urlsafe(48))
    assert e.value.error == "invalid_grant"


@pytest.mark.control("ID-9")
def test_no_client_has_a_wildcard_redirect_uri_or_web_origin(stack: dict[str, Any]) -> None:
    realm = yaml.safe_load(REALM.read_text())
    gateway = "${GATEWAY_URL}"
    for client_id, c in realm["clients"].items():
        for uri in c["redirect_uris"] + c.get("post_logout_redirect_uris", []):
            assert "*" not in uri, client_id
            parts = urlsplit(
                uri.replace(gateway, "https://gateway").replace("${EMR_URL}", "https://emr")
            )
            assert parts.scheme in ("https", "http") and parts.path and not parts.fragment
            if parts.scheme == "http":  # RFC 8252 loopback redirect for the native CLI only
                assert parts.hostname == "127.0.0.1" and c["application_type"] == "native"
        for origin in c["web_origins"]:
            assert origin == gateway, client_id
        if not c["public"]:
            # Devices (client credentials), or a web application that signs its requests
            # (private_key_jwt) and still uses PKCE for its code flow (the EMR simulator).
            assert c["grant_types"] in (["client_credentials"], []) or (
                c["grant_types"] == ["authorization_code"]
                and c["client_authentication"] == "private_key_jwt"
                and c["pkce"] == "S256"
            ), client_id


@pytest.mark.control("ID-9")
@pytest.mark.parametrize(
    "redirect_uri",
    [
        "{gw}/callback/../evil",
        "{gw}/callback2",
        "{gw}/callback?x=1",
        "https://evil.example/callback",
        "{gw}.evil.example/callback",
    ],
)
def test_redirect_uris_match_exactly(
    stack: dict[str, Any], oidc: dict[str, Any], idp: Any, redirect_uri: str
) -> None:
    params = {
        "response_type": "code",
        "client_id": "ohif-viewer",
        "redirect_uri": redirect_uri.format(gw=stack["gateway_url"].rstrip("/")),
        "scope": "openid",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    }
    r = idp.get(f"{oidc['authorization_endpoint']}?{urlencode(params)}")
    # Never redirected anywhere: an error page at the IdP itself.
    assert r.status_code == 400 and "location" not in r.headers
    assert "redirect_uri did not match" in r.text or "invalid_redirect_uri" in r.text


@pytest.mark.control("ID-9")
def test_cors_only_for_the_gateway_origin(
    stack: dict[str, Any], oidc: dict[str, Any], idp: Any
) -> None:
    gateway_origin = stack["resource"]
    form = {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "ohif-viewer"}
    good = idp.post(oidc["token_endpoint"], data=form, headers={"Origin": gateway_origin})
    evil = idp.post(oidc["token_endpoint"], data=form, headers={"Origin": "https://evil.example"})
    assert good.headers.get("access-control-allow-origin") == gateway_origin
    assert "access-control-allow-origin" not in evil.headers
    assert evil.status_code == 400


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.control("ID-3")
def test_wrong_password_unknown_user_and_wrong_code_look_the_same(
    stack: dict[str, Any], oidc: dict[str, Any], idp: Any
) -> None:
    page = _login_page(idp, oidc, stack)
    wrong = _post_form(idp, page, {"username": "researcher", "password": "not-the-password"})
    unknown = _post_form(
        idp, wrong, {"username": f"nobody-{secrets.token_hex(4)}", "password": "whatever"}
    )
    for r in (wrong, unknown):
        assert r.status_code == 401 and GENERIC_ERROR in r.text
    # A wrong TOTP code after a correct password gets the same message.
    with pytest.raises(OAuthError):
        login_password(stack, "admin", "openid", acr_values=ACR_MFA, totp_code="000000")


@pytest.mark.control("ID-3")
def test_repeated_failures_lock_the_name_out(
    stack: dict[str, Any], oidc: dict[str, Any], idp: Any
) -> None:
    realm = yaml.safe_load(REALM.read_text())
    name = f"guesser-{secrets.token_hex(4)}"  # unknown names lock out too (no enumeration)
    page = _login_page(idp, oidc, stack)
    statuses = []
    for _ in range(realm["brute_force"]["max_failures"] + 1):
        page = _post_form(idp, page, {"username": name, "password": secrets.token_hex(8)})
        statuses.append(page.status_code)
        assert GENERIC_ERROR in page.text
    assert statuses[0] == 401 and statuses[-1] == 429
    assert int(page.headers["retry-after"]) > 0


@pytest.mark.control("ID-3")
def test_wrong_totp_codes_count_toward_lockout_without_revealing_it(stack: dict[str, Any]) -> None:
    with pytest.raises(OAuthError) as e:
        login_password(stack, "north-clinician", "openid", acr_values=ACR_MFA, totp_code="12345")
    assert e.value.status == 401  # malformed code: the same generic failure


@pytest.mark.control("ID-7")
def test_replayed_authorization_code_is_refused_and_its_tokens_revoked(
    stack: dict[str, Any],
) -> None:
    result = authorize(stack, "researcher", "openid user/ImagingStudy.rs")
    first = exchange_code(stack, result)
    with pytest.raises(OAuthError) as e:
        exchange_code(stack, result)
    assert e.value.error == "invalid_grant"
    with pytest.raises(OAuthError) as e:  # the refresh token of the first exchange is dead
        refresh(stack, first)
    assert e.value.error == "invalid_grant"


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({}, "invalid_request"),
        ({"grant_type": "urn:x:unknown", "client_id": "ohif-viewer"}, "unsupported_grant_type"),
        ({"grant_type": "authorization_code", "client_id": "ohif-viewer"}, "invalid_request"),
        (
            {"grant_type": "authorization_code", "client_id": "ohif-viewer", "code": "forged",
             "redirect_uri": "https://x/cb", "code_verifier": "v" * 43},
            "invalid_grant",
        ),
        ({"grant_type": "client_credentials", "client_id": "no-such-client"}, "invalid_client"),
        ({"grant_type": "client_credentials", "client_id": "modality-ct1"}, "invalid_client"),
        ({"grant_type": "refresh_token", "client_id": "ohif-viewer", "refresh_token": "x"},
         "invalid_grant"),
    ],
)  # fmt: skip
@pytest.mark.control("ID-9")
def test_malformed_token_requests_get_rfc6749_errors(
    oidc: dict[str, Any], idp: Any, form: dict[str, str], error: str
) -> None:
    r = idp.post(oidc["token_endpoint"], data=form)
    assert r.status_code in (400, 401)
    assert r.json()["error"] == error
    assert "access_token" not in r.json()


@pytest.mark.control("ID-9")
def test_bad_scope_and_resource_get_rfc6749_errors(stack: dict[str, Any]) -> None:
    with pytest.raises(OAuthError) as e:
        login_password(stack, "researcher", "openid user/ImagingStudy.rs admin/everything")
    assert e.value.error == "invalid_scope"
    with pytest.raises(OAuthError) as e:
        login_password(stack, "researcher", "openid study:not-a-uid")
    assert e.value.error == "invalid_scope"
    with pytest.raises(OAuthError) as e:
        client_credentials(stack, "ai-node", "system/ImagingStudy.rs", resource="https://x.invalid")
    assert e.value.error == "invalid_target"


@pytest.mark.control("ID-9")
def test_authorization_errors_return_to_the_client(
    stack: dict[str, Any], oidc: dict[str, Any], idp: Any
) -> None:
    params = {
        "response_type": "code",
        "client_id": "ohif-viewer",
        "redirect_uri": redirect_uri_for(stack, "ohif-viewer"),
        "scope": "openid",
        "state": "s1",
        "code_challenge": "short",
        "code_challenge_method": "S256",
    }
    r = idp.get(f"{oidc['authorization_endpoint']}?{urlencode(params)}")
    assert r.is_redirect
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert query["error"] == ["invalid_request"] and query["state"] == ["s1"]
