"""Deployment CA and leaf certificates: usage, names, permissions, reuse and renewal."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from ztstack import pki


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_leaf_names_loopback_and_keys_are_private(tmp_path: Path) -> None:
    pairs = pki.ensure_pki(tmp_path)
    assert set(pairs) == {"ca", *pki.LEAVES}
    for name, pair in pairs.items():
        assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600, name
        if name == "ca":
            continue
        san = load(pair.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
        want = ["localhost", *pki.CONTAINER_NAMES.get(name, [])]
        assert san.value.get_values_for_type(x509.DNSName) == want
        assert set(san.value.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
        }


@pytest.mark.parametrize(
    ("name", "usage", "pinned"),
    [
        ("gateway", ExtendedKeyUsageOID.SERVER_AUTH, False),
        ("idp", ExtendedKeyUsageOID.SERVER_AUTH, False),
        ("orthanc", ExtendedKeyUsageOID.SERVER_AUTH, False),
        ("gateway-client", ExtendedKeyUsageOID.CLIENT_AUTH, True),
        ("modality-ct1", ExtendedKeyUsageOID.CLIENT_AUTH, True),
    ],
)
def test_servers_chain_to_the_ca_and_clients_are_pinned(
    tmp_path: Path, name: str, usage: x509.ObjectIdentifier, pinned: bool
) -> None:
    pairs = pki.ensure_pki(tmp_path)
    cert = load(pairs[name].cert)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    issuer = cert if pinned else load(pairs["ca"].cert)
    cert.verify_directly_issued_by(issuer)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= pki.LEAF_LIFETIME + dt.timedelta(minutes=5)


def test_reused_while_valid(tmp_path: Path) -> None:
    first = {n: p.cert.read_bytes() for n, p in pki.ensure_pki(tmp_path).items()}
    second = {n: p.cert.read_bytes() for n, p in pki.ensure_pki(tmp_path).items()}
    assert first == second


def test_renewed_near_expiry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = pki.ensure_pki(tmp_path)["gateway"].cert.read_bytes()
    later = dt.datetime.now(dt.UTC) + pki.LEAF_LIFETIME * 0.9
    monkeypatch.setattr(pki, "_now", lambda: later)
    assert pki.ensure_pki(tmp_path)["gateway"].cert.read_bytes() != first


def test_new_ca_reissues_every_server_leaf(tmp_path: Path) -> None:
    pairs = pki.ensure_pki(tmp_path)
    old = pairs["gateway"].cert.read_bytes()
    pairs["ca"].cert.unlink()
    pairs = pki.ensure_pki(tmp_path)
    assert pairs["gateway"].cert.read_bytes() != old
    load(pairs["gateway"].cert).verify_directly_issued_by(load(pairs["ca"].cert))
