"""Authorization code + PKCE S256 for people, driven by scripted form posts through the IdP's
own login pages (fields `username`, `password`, then `otp`), as a browser would submit them.
"""

from __future__ import annotations

import html
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import pyotp
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from dicomweb_cli import dpop
from dicomweb_cli.stack import Stack, demo_credentials, discovery, http_client, load_stack
from dicomweb_cli.tokens import OAuthError, TokenSet, token_request

REDIRECT_URIS = {
    "dicomweb-cli": "http://127.0.0.1:8765/callback",
}
_FORM = re.compile(r'<form[^>]*action="([^"]+)"', re.I)


def redirect_uri_for(stack: Stack, client_id: str) -> str:
    if client_id == "ohif-viewer":
        return f"{stack['gateway_url'].rstrip('/')}/callback"
    return REDIRECT_URIS[client_id]


@dataclass
class AuthorizationResult:
    client_id: str
    redirect_uri: str
    code: str
    code_verifier: str | None
    resource: str


# TOTP codes are single-use per time step at the IdP; remember the last step per user so
# back-to-back logins use the next step (the IdP accepts one step of drift) or wait for it.
_totp_lock = threading.Lock()
_totp_last: dict[tuple[str, str], int] = {}


def next_totp(issuer: str, user: str, secret: str) -> str:
    with _totp_lock:
        totp = pyotp.TOTP(secret)
        while True:
            now_step = int(time.time()) // 30
            step = max(now_step, _totp_last.get((issuer, user), -1) + 1)
            if step <= now_step + 1:
                _totp_last[(issuer, user)] = step
                return totp.at(step * 30)
            time.sleep(30 - time.time() % 30 + 0.2)


def _location(r: httpx.Response) -> str:
    return urljoin(str(r.request.url), r.headers["location"])


def _submit(client: httpx.Client, page: httpx.Response, fields: dict[str, str]) -> httpx.Response:
    m = _FORM.search(page.text)
    if not m:
        raise OAuthError("login_failed", "no form on the login page", page.status_code)
    return client.post(urljoin(str(page.request.url), html.unescape(m.group(1))), data=fields)


def authorize(
    stack: Stack | str,
    user: str,
    scope: str,
    *,
    client_id: str = "ohif-viewer",
    password: str | None = None,
    totp_code: str | None = None,
    totp_secret: str | None = None,
    acr_values: str | None = None,
    max_age: int | None = None,
    resource: str | None = None,
    pkce: bool = True,
    dpop_key: dict[str, Any] | None = None,
    extra: dict[str, str] | None = None,
) -> AuthorizationResult:
    """Runs the front channel and returns the authorization code (no token exchange)."""
    st = load_stack(stack)
    meta = discovery(st)
    creds = demo_credentials(st)["users"].get(user, {})
    password = password if password is not None else creds.get("password", "")
    totp_secret = totp_secret or creds.get("totp_secret")
    redirect_uri = redirect_uri_for(st, client_id)
    verifier = secrets.token_urlsafe(48) if pkce else None
    state = secrets.token_urlsafe(16)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "nonce": secrets.token_urlsafe(16),
        "resource": resource or st["resource"],
    }
    if verifier:
        params["code_challenge"] = create_s256_code_challenge(verifier)
        params["code_challenge_method"] = "S256"
    if acr_values:
        params["acr_values"] = acr_values
    if max_age is not None:
        params["max_age"] = str(max_age)
    if dpop_key is not None:
        params["dpop_jkt"] = dpop.thumbprint(dpop_key)
    params.update(extra or {})

    with http_client(st) as client:
        r = client.get(f"{meta['authorization_endpoint']}?{urlencode(params)}")
        for _ in range(12):
            if r.is_redirect:
                target = _location(r)
                if target.startswith(redirect_uri):
                    return _callback(
                        target,
                        state,
                        meta["issuer"],
                        client_id,
                        redirect_uri,
                        verifier,
                        params["resource"],
                    )
                r = client.get(target)
                continue
            if r.status_code != 200:
                raise OAuthError("login_failed", "sign-in refused", r.status_code)
            if 'name="password"' in r.text:
                r = _submit(client, r, {"username": user, "password": password})
            elif 'name="otp"' in r.text:
                if totp_code is None and not totp_secret:
                    raise OAuthError("otp_required", "a TOTP code or secret is needed", 200)
                code = totp_code or next_totp(meta["issuer"], user, str(totp_secret))
                r = _submit(client, r, {"otp": code})
            elif 'id="webauthn-options"' in r.text:
                raise OAuthError("webauthn_required", "use a browser with a security key", 200)
            else:
                raise OAuthError("login_failed", "unexpected page", r.status_code)
        raise OAuthError("login_failed", "too many redirects", 0)


def _callback(
    target: str,
    state: str,
    issuer: str,
    client_id: str,
    redirect_uri: str,
    verifier: str | None,
    resource: str,
) -> AuthorizationResult:
    query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
    if query.get("state") != state:
        raise OAuthError("invalid_state", "state mismatch")
    if query.get("iss") not in (None, issuer):  # RFC 9207 mix-up defence
        raise OAuthError("invalid_issuer", "authorization response from another issuer")
    if "error" in query:
        raise OAuthError(query["error"], query.get("error_description", ""))
    return AuthorizationResult(client_id, redirect_uri, query["code"], verifier, resource)


def exchange_code(
    stack: Stack | str,
    result: AuthorizationResult,
    dpop_key: dict[str, Any] | None = None,
    *,
    code_verifier: str | None = "__from_result__",
) -> TokenSet:
    st = load_stack(stack)
    meta = discovery(st)
    form = {
        "grant_type": "authorization_code",
        "code": result.code,
        "redirect_uri": result.redirect_uri,
        "client_id": result.client_id,
        "resource": result.resource,
    }
    verifier = result.code_verifier if code_verifier == "__from_result__" else code_verifier
    if verifier:
        form["code_verifier"] = verifier
    with http_client(st) as client:
        body = token_request(client, meta["token_endpoint"], form, dpop_key)
    return TokenSet.from_response(body, result.client_id, dpop_key)


def login_password(
    stack: Stack | str,
    user: str,
    scope: str,
    acr_values: str | None = None,
    max_age: int | None = None,
    dpop_key: dict[str, Any] | None = None,
    *,
    client_id: str | None = None,
    password: str | None = None,
    totp_code: str | None = None,
    totp_secret: str | None = None,
    resource: str | None = None,
) -> TokenSet:
    """Log `user` in (password, then TOTP when the requested acr needs it).

    Without a DPoP key the viewer's client (`ohif-viewer`, Bearer tokens) is used; with one,
    `dicomweb-cli`, whose tokens are always DPoP-bound.
    """
    client_id = client_id or ("dicomweb-cli" if dpop_key is not None else "ohif-viewer")
    if client_id == "dicomweb-cli" and dpop_key is None:
        dpop_key = dpop.generate_key()
    result = authorize(
        stack,
        user,
        scope,
        client_id=client_id,
        password=password,
        totp_code=totp_code,
        totp_secret=totp_secret,
        acr_values=acr_values,
        max_age=max_age,
        resource=resource,
        dpop_key=dpop_key,
    )
    return exchange_code(stack, result, dpop_key)


def refresh(stack: Stack | str, token_set: TokenSet, scope: str | None = None) -> TokenSet:
    """Refresh (the IdP rotates the refresh token; the old one is then spent)."""
    if not token_set.refresh_token:
        raise OAuthError("invalid_request", "no refresh token")
    st = load_stack(stack)
    meta = discovery(st)
    form: dict[str, str] = {
        "grant_type": "refresh_token",
        "refresh_token": token_set.refresh_token,
        "client_id": token_set.client_id,
        "resource": str(token_set.claims.get("aud", st["resource"])),
    }
    if scope:
        form["scope"] = scope
    with http_client(st) as client:
        body = token_request(client, meta["token_endpoint"], form, token_set.dpop_key)
    return TokenSet.from_response(body, token_set.client_id, token_set.dpop_key)


def revoke(stack: Stack | str, token_set: TokenSet, which: str = "refresh_token") -> None:
    """RFC 7009 revocation of the refresh token (default) or the access token."""
    st = load_stack(stack)
    meta = discovery(st)
    token = token_set.refresh_token if which == "refresh_token" else token_set.access_token
    with http_client(st) as client:
        r = client.post(
            meta["revocation_endpoint"],
            data={"token": token or "", "token_type_hint": which, "client_id": token_set.client_id},
        )
    if r.status_code != 200:
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        raise OAuthError(
            body.get("error", "server_error"), body.get("error_description", ""), r.status_code
        )
