"""DPoP proofs (RFC 9449) and client key pairs.

A proof is a JWS with header `typ: dpop+jwt`, the public `jwk`, and claims `jti`, `htm`,
`htu` (no query or fragment), `iat`, plus `ath` when it accompanies an access token and
`nonce` when the server asked for one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from joserfc import jwt
from joserfc.jwk import ECKey

ALGORITHM = "ES256"


def generate_key() -> dict[str, Any]:
    """A fresh P-256 private JWK (as a dict) for DPoP or client authentication."""
    return ECKey.generate_key("P-256", private=True).as_dict(private=True)


def load_key(path: str | Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def public_jwk(private_jwk: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in private_jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}


def thumbprint(private_jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint, the value an access token binds in `cnf.jkt`."""
    return str(ECKey.import_key(public_jwk(private_jwk)).thumbprint())


def _htu(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def access_token_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def make_proof(
    private_jwk: dict[str, Any],
    htm: str,
    htu: str,
    access_token: str | None = None,
    nonce: str | None = None,
    *,
    iat: int | None = None,
    jti: str | None = None,
) -> str:
    """A DPoP proof for one request (`iat`/`jti` overridable so tests can forge bad ones)."""
    key = ECKey.import_key(private_jwk)
    header = {"typ": "dpop+jwt", "alg": ALGORITHM, "jwk": public_jwk(private_jwk)}
    claims: dict[str, Any] = {
        "jti": jti or secrets.token_urlsafe(16),
        "htm": htm.upper(),
        "htu": _htu(htu),
        "iat": int(time.time()) if iat is None else iat,
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    return jwt.encode(header, claims, key, algorithms=[ALGORITHM])
