"""A software WebAuthn authenticator for the end-to-end tests (no browser): it answers the
IdP's registration and assertion options with `none` attestation and ES256 signatures, as
Chromium's virtual authenticator would, so a test can drive the IdP's pages with httpx and then
inspect what the IdP stored. P-256 keys only; user presence and verification always set."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ZERO_AAGUID = bytes(16)
UP, UV, AT = 0x01, 0x04, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cbor(value: Any) -> bytes:
    """Canonical-enough CBOR (RFC 8949) for attestation objects and COSE keys."""

    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
            if n < 1 << (8 * struct.calcsize(fmt)):
                return bytes([major << 5 | info]) + struct.pack(fmt, n)
        raise ValueError("integer too large")

    if isinstance(value, bool) or value is None:
        raise TypeError("not needed here")
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return head(3, len(raw)) + raw
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(cbor(v) for v in value)
    if isinstance(value, dict):
        return head(5, len(value)) + b"".join(cbor(k) + cbor(v) for k, v in value.items())
    raise TypeError(type(value))


class SoftKey:
    """One credential: a P-256 key pair, its id and its signature counter."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey | None = None,
        credential_id: bytes | None = None,
        aaguid: bytes = ZERO_AAGUID,
    ) -> None:
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        self.credential_id = credential_id or os.urandom(16)
        self.aaguid = aaguid
        self.counter = 0

    @classmethod
    def from_demo(cls, webauthn: dict[str, str]) -> SoftKey:
        """The seeded credential of a demo user (stack.json `users.<name>.webauthn`)."""
        key = serialization.load_der_private_key(
            base64.b64decode(webauthn["private_key_pkcs8"]), password=None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(key, b64url_decode(webauthn["credential_id"]))

    @property
    def id(self) -> str:
        return b64url(self.credential_id)

    def _cose(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor(
            {
                1: 2,
                3: -7,
                -1: 1,
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

    @staticmethod
    def _client_data(kind: str, challenge: str, origin: str) -> bytes:
        return json.dumps(
            {"type": kind, "challenge": challenge, "origin": origin, "crossOrigin": False}
        ).encode()

    def create(self, options: dict[str, Any], origin: str) -> dict[str, Any]:
        """navigator.credentials.create() for the registration `options` (`none` attestation)."""
        rp_hash = hashlib.sha256(options["rp"]["id"].encode()).digest()
        attested = (
            self.aaguid
            + struct.pack(">H", len(self.credential_id))
            + self.credential_id
            + self._cose()
        )
        auth_data = rp_hash + bytes([UP | UV | AT]) + struct.pack(">I", self.counter) + attested
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        attestation = cbor({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {
            "id": self.id,
            "rawId": self.id,
            "type": "public-key",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["usb"],
            },
        }

    def get(self, options: dict[str, Any], origin: str) -> dict[str, Any]:
        """navigator.credentials.get() for the assertion `options`."""
        self.counter += 1
        rp_hash = hashlib.sha256(options["rpId"].encode()).digest()
        auth_data = rp_hash + bytes([UP | UV]) + struct.pack(">I", self.counter)
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        signed = auth_data + hashlib.sha256(client_data).digest()
        signature = self.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return {
            "id": self.id,
            "rawId": self.id,
            "type": "public-key",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
            },
        }
