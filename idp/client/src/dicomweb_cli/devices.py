"""Client credentials with private_key_jwt (RFC 7523) for devices and back-end services."""

from __future__ import annotations

import secrets
import time
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey

from dicomweb_cli import dpop
from dicomweb_cli.stack import Stack, demo_credentials, discovery, http_client, load_stack
from dicomweb_cli.tokens import TokenSet, token_request

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def client_assertion(client_id: str, private_jwk: dict[str, Any], audience: str) -> str:
    """A short-lived, single-use JWT that proves possession of the client's private key."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": secrets.token_urlsafe(16),
        "iat": now,
        "exp": now + 60,
    }
    key = ECKey.import_key(private_jwk)
    header = {"alg": "ES256", "typ": "JWT"}
    if "kid" in private_jwk:
        header["kid"] = private_jwk["kid"]
    return jwt.encode(header, claims, key, algorithms=["ES256"])


def client_credentials(
    stack: Stack | str,
    client_id: str,
    scope: str,
    dpop_key: dict[str, Any] | None = None,
    *,
    resource: str | None = None,
    key_path: str | None = None,
) -> TokenSet:
    st = load_stack(stack)
    meta = discovery(st)
    path = key_path or demo_credentials(st)["clients"][client_id]["key_path"]
    form = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_id": client_id,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(client_id, dpop.load_key(path), meta["issuer"]),
        "resource": resource or st["resource"],
    }
    with http_client(st) as client:
        body = token_request(client, meta["token_endpoint"], form, dpop_key)
    return TokenSet.from_response(body, client_id, dpop_key)
