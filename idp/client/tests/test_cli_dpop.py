"""DPoP proofs (RFC 9449 section 4.2) and client assertions, checked offline."""

from __future__ import annotations

import base64
import hashlib

import pytest
from dicomweb_cli import decode_header, decode_unverified, generate_key, make_proof, thumbprint
from dicomweb_cli.devices import client_assertion
from joserfc import jwt
from joserfc.jwk import ECKey


def test_proof_header_and_claims() -> None:
    key = generate_key()
    proof = make_proof(key, "get", "https://gw.example/dicom-web/studies?limit=1#x", "tok")
    header, claims = decode_header(proof), decode_unverified(proof)
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256"
    assert "d" not in header["jwk"]  # never the private part
    assert claims["htm"] == "GET"
    assert claims["htu"] == "https://gw.example/dicom-web/studies"  # no query, no fragment
    digest = hashlib.sha256(b"tok").digest()
    assert claims["ath"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert "nonce" not in claims and claims["jti"] and isinstance(claims["iat"], int)
    # The proof verifies with the key it carries.
    jwt.decode(proof, ECKey.import_key(header["jwk"]), algorithms=["ES256"])


def test_proof_nonce_and_unique_jti() -> None:
    key = generate_key()
    a = decode_unverified(make_proof(key, "POST", "https://idp/token", nonce="n1"))
    b = decode_unverified(make_proof(key, "POST", "https://idp/token"))
    assert a["nonce"] == "n1" and "ath" not in a
    assert a["jti"] != b["jti"]


def test_thumbprint_is_rfc7638_sha256() -> None:
    key = generate_key()
    assert thumbprint(key) == ECKey.import_key(key).thumbprint()
    assert len(base64.urlsafe_b64decode(thumbprint(key) + "=")) == 32


@pytest.mark.parametrize("client_id", ["modality-ct1", "ai-node"])
def test_client_assertion_claims(client_id: str) -> None:
    key = generate_key()
    token = client_assertion(client_id, key, "https://idp/realms/dicomweb")
    claims = jwt.decode(token, ECKey.import_key(key), algorithms=["ES256"]).claims
    assert claims["iss"] == claims["sub"] == client_id
    assert claims["aud"] == "https://idp/realms/dicomweb"
    assert 0 < claims["exp"] - claims["iat"] <= 60 and claims["jti"]
