"""The EMR as a confidential OpenID Connect client: authorization code + PKCE (S256),
`private_key_jwt` client authentication, ID tokens checked against the IdP's JWKS."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Pending:
    """One authorization request in flight, keyed by its `state`."""

    purpose: str  # "login" | "weasis"
    verifier: str
    nonce: str
    study: str | None = None
    created: float = field(default_factory=time.time)


@dataclass
class Client:
    issuer: str
    client_id: str
    redirect_uri: str
    resource: str
    private_jwk: dict[str, Any]
    http: httpx.AsyncClient
    _meta: dict[str, Any] | None = None
    _jwks: KeySet | None = None

    async def meta(self) -> dict[str, Any]:
        if self._meta is None:
            answer = await self.http.get(self.issuer + "/.well-known/openid-configuration")
            answer.raise_for_status()
            self._meta = dict(answer.json())
        return self._meta

    async def authorize_url(self, pending: Pending, state: str, scope: str, **extra: str) -> str:
        challenge = base64.urlsafe_b64encode(hashlib.sha256(pending.verifier.encode()).digest())
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": scope,
            "state": state,
            "nonce": pending.nonce,
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
            "resource": self.resource,
            **extra,
        }
        return str((await self.meta())["authorization_endpoint"]) + "?" + urlencode(params)

    def assertion(self, audience: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + 60,
        }
        key = ECKey.import_key(self.private_jwk)
        return jwt.encode({"alg": "ES256", "typ": "JWT"}, claims, key)

    async def redeem(self, code: str, pending: Pending) -> dict[str, Any]:
        meta = await self.meta()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": pending.verifier,
            "client_id": self.client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(str(meta["issuer"])),
        }
        answer = await self.http.post(str(meta["token_endpoint"]), data=form)
        if answer.status_code != 200:
            raise PermissionError(f"token endpoint: {answer.status_code} {answer.text[:200]}")
        return dict(answer.json())

    async def id_claims(self, id_token: str, nonce: str) -> dict[str, Any]:
        """Check the ID token (signature, iss, aud, exp, nonce) and return its claims."""
        if self._jwks is None:
            answer = await self.http.get(str((await self.meta())["jwks_uri"]))
            answer.raise_for_status()
            self._jwks = KeySet.import_key_set(answer.json())
        token = jwt.decode(id_token, self._jwks, algorithms=["ES256"])
        claims = dict(token.claims)
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if claims.get("iss") != self.issuer or self.client_id not in audiences:
            raise PermissionError("ID token for another issuer or client")
        if int(claims.get("exp", 0)) < time.time() - 30 or claims.get("nonce") != nonce:
            raise PermissionError("ID token expired or replayed")
        return claims


def new_pending(purpose: str, study: str | None = None) -> Pending:
    return Pending(purpose, secrets.token_urlsafe(48), secrets.token_urlsafe(16), study)
