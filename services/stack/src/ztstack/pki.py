"""The deployment CA and short-lived leaf certificates, generated into `<run>/pki/`.

One EC P-256 CA per run directory; every server and client certificate is signed by it and
names `DNS:localhost, IP:127.0.0.1, IP:::1` (all servers listen on loopback; server
certificates also carry their compose service name, CONTAINER_NAMES). Certificates are
reused while valid and renewed when less than a third of their lifetime remains, so a warm
`make up` does no crypto work. Private keys are written 0600 and never leave the run directory.

Server certificates chain to the CA. The client certificates the archive accepts are *pinned*
instead: self-signed, so each one is its own trust anchor. Orthanc's HTTPS server (civetweb) and
its DICOM TLS layer (DCMTK) verify with OpenSSL without partial chains, so trusting a CA-signed
leaf alone fails, and trusting the CA would admit every certificate the CA ever signed (the
gateway's server certificate included). A pinned certificate admits exactly one key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = dt.timedelta(days=30)
LEAF_LIFETIME = dt.timedelta(days=2)
RENEW_FRACTION = 1 / 3
SERVER, CLIENT = "server", "client"

# name -> usage. gateway-client is the only HTTPS/DICOM-TLS client the archive trusts;
# modality-ct1 is the registered device MODALITY_CT1. Client certificates are pinned (self-signed).
# The TLS bridge of each configured legacy device gets one more: `bridge-<name>` (ensure_pki).
LEAVES: dict[str, str] = {
    "gateway": SERVER,
    "idp": SERVER,
    "orthanc": SERVER,
    "emr": SERVER,  # the EMR simulator (issue 19)
    "gateway-client": CLIENT,
    "modality-ct1": CLIENT,
}

# Server names inside compose's networks (compose/compose.yaml), besides localhost.
CONTAINER_NAMES: dict[str, list[str]] = {
    "gateway": ["gateway"],
    "idp": ["keycloak"],
    "orthanc": ["orthanc"],
    "dcm4chee": ["dcm4chee"],  # issued by compose.render only (compose/dcm4chee.yaml)
}


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by the owner only (created 0600, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _still_fresh(cert_path: Path, issuer: x509.Certificate | None = None) -> bool:
    """Valid for at least another third of its lifetime and (if given) signed by issuer."""
    if not cert_path.exists():
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        return False
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if cert.not_valid_after_utc - _now() < lifetime * RENEW_FRACTION:
        return False
    if issuer is not None:
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):  # any mismatch means: reissue
            return False
    return True


def _names(cert_path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return list(san.value.get_values_for_type(x509.DNSName))


def _self(cert_path: Path) -> x509.Certificate | None:
    """A pinned certificate is its own issuer."""
    try:
        return x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return None


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DICOMweb zero-trust demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def ensure_ca(pki: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    """Return (cert, key, created). A new CA invalidates every leaf it did not sign."""
    cert_path, key_path = pki / "ca.pem", pki / "ca.key"
    if _still_fresh(cert_path) and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key, False
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    name = _name("DICOMweb zero-trust demo CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, True


def issue_leaf(
    pki: Path,
    name: str,
    usage: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> Pair:
    pair = Pair(pki / f"{name}.pem", pki / f"{name}.key")
    pinned = usage == CLIENT
    dns = ["localhost", *CONTAINER_NAMES.get(name, [])]
    if pinned:
        if _still_fresh(pair.cert, _self(pair.cert)) and pair.key.exists():
            return pair
    elif _still_fresh(pair.cert, ca_cert) and pair.key.exists() and _names(pair.cert) == dns:
        return pair
    key = ec.generate_private_key(ec.SECP256R1())
    signer_key = key if pinned else ca_key
    issuer = _name(name) if pinned else ca_cert.subject
    now = _now()
    eku = ExtendedKeyUsageOID.SERVER_AUTH if usage == SERVER else ExtendedKeyUsageOID.CLIENT_AUTH
    san = x509.SubjectAlternativeName(
        [
            *(x509.DNSName(n) for n in dns),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + LEAF_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
        .sign(signer_key, hashes.SHA256())
    )
    write_private(pair.key, _key_pem(key))
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pair


def ensure_pki(pki: Path, extra_clients: list[str] | None = None) -> dict[str, Pair]:
    """Create or refresh the CA and every leaf; returns name -> (cert, key) plus "ca".

    `extra_clients`: more pinned client certificates, e.g. `bridge-<name>` for the TLS bridge
    of each configured legacy device (`gateway.legacy_devices`).
    """
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    ca_cert, ca_key, _ = ensure_ca(pki)
    pairs = {"ca": Pair(pki / "ca.pem", pki / "ca.key")}
    leaves = dict(LEAVES) | dict.fromkeys(extra_clients or [], CLIENT)
    for name, usage in leaves.items():
        pairs[name] = issue_leaf(pki, name, usage, ca_cert, ca_key)
    return pairs
