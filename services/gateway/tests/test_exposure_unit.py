"""Unit tests of the exposure check (no network) and of the inventory's permission sentences."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dicomweb_gateway.devices import permissions
from dicomweb_gateway.exposure import report
from dicomweb_gateway.exposure.findings import Endpoint, analyse_dicom, analyse_http, analyse_tls
from dicomweb_gateway.exposure.probes import (
    Association,
    Certificate,
    HttpAnswer,
    TlsInfo,
    blank_associate_rq,
)
from dicomweb_gateway.exposure.targets import (
    Budget,
    RateLimiter,
    Target,
    TargetError,
    parse_targets,
)
from dicomweb_gateway.policy import load_policy

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "spec",
    [
        "10.0.0.0/23:104",
        "10.0.0.0/8:104",
        "[fd00::/119]:104",
        "host",
        "h:0",
        "h:70000",
        "[::1]104",
        "",
    ],
)
def test_targets_refused(spec: str) -> None:
    with pytest.raises(TargetError):
        parse_targets([spec])


def test_targets_expand_a_24_and_deduplicate() -> None:
    targets = parse_targets(["192.0.2.0/24:104", "192.0.2.7:104", "[::1]:11112", "127.0.0.1:8443"])
    assert len(targets) == 254 + 2
    assert targets[0] == Target("192.0.2.1", "192.0.2.1", 104)
    assert Target("::1", "::1", 11112).label == "[::1]:11112"
    with pytest.raises(TargetError):
        parse_targets([f"192.0.2.0/24:{p}" for p in range(100, 105)])  # > 1024 endpoints


def test_rate_limiter_paces_and_bounds() -> None:
    limiter = RateLimiter(rate=50, budget=5)
    start = time.monotonic()
    for _ in range(5):
        limiter.acquire()
    assert time.monotonic() - start >= 4 / 50 * 0.9
    with pytest.raises(Budget):
        limiter.acquire()


def test_blank_associate_rq_is_a_ps38_pdu() -> None:
    pdu = blank_associate_rq(" " * 16, "ZTEXPOSURE")
    assert pdu[0] == 0x01 and int.from_bytes(pdu[2:6], "big") == len(pdu) - 6
    assert pdu[10:26] == b" " * 16 and pdu[26:42] == b"ZTEXPOSURE      "
    assert b"1.2.840.10008.3.1.1.1" in pdu and b"1.2.840.10008.1.1" in pdu


def _cert(days_left: float, lifetime: float, names_target: bool = True) -> Certificate:
    return Certificate(
        "CN=x",
        "CN=ca",
        "",
        "",
        days_left,
        lifetime,
        False,
        ["IP:127.0.0.1"],
        "EC secp256r1",
        "sha256",
        True,
        "",
        names_target,
    )


def ids(ep: Endpoint) -> dict[str, str]:
    return {f.id: f.severity for f in ep.findings}


def test_a_closed_configuration_yields_info_only() -> None:
    ep = Endpoint(Target("127.0.0.1", "127.0.0.1", 8443), "open", "https")
    ep.tls = TlsInfo(
        {"TLSv1.0": False, "TLSv1.1": False, "TLSv1.2": True, "TLSv1.3": True},
        ["ECDHE-ECDSA-AES128-GCM-SHA256"],
        "TLS_AES_256_GCM_SHA384",
        False,
        _cert(2, 2),
    )
    ep.http = [
        HttpAnswer("/dicom-web/studies", 401, hsts="max-age=31536000"),
        HttpAnswer("/system", 404, hsts="max-age=63072000"),
    ]
    ep.findings = analyse_tls(ep) + analyse_http(ep, tls=True)
    assert set(ids(ep).values()) == {"info"}


def test_each_problem_has_its_finding() -> None:
    ep = Endpoint(Target("h", "192.0.2.1", 443), "open", "https")
    ep.tls = TlsInfo(
        {"TLSv1.0": True, "TLSv1.1": False, "TLSv1.2": True, "TLSv1.3": False},
        ["AES128-SHA", "ECDHE-RSA-AES128-GCM-SHA256"],
        "",
        False,
        _cert(-1, 365, names_target=False),
    )
    ep.http = [
        HttpAnswer("/dicom-web/studies", 401, www_authenticate="Basic", server="Orthanc"),
        HttpAnswer("/dicom-web/studies", 200, credentials="orthanc:orthanc"),
    ]
    ep.findings = analyse_tls(ep) + analyse_http(ep, tls=True)
    found = ids(ep)
    assert found["tls-legacy-protocol"] == "high"
    assert found["tls-weak-suites"] == "medium"
    assert found["tls13-missing"] == "low"
    assert found["tls-certificate-expired"] == "high"
    assert found["tls-certificate-name"] == "low"  # scanned by name, certificate names an IP
    assert found["default-credentials"] == "critical"
    assert found["hsts-missing"] == "medium"
    assert found["server-banner"] == "low"


def test_dicom_findings() -> None:
    ep = Endpoint(Target("h", "192.0.2.1", 104), "open", "dicom")
    ep.dicom = [
        Association("plain", "ZTEXPOSURE", "ANY-SCP", "accepted", echo_status=0),
        Association("plain", "ZTEXPOSURE", "ORTHANC", "accepted", echo_status=0),
        Association("plain", "CT1", "ORTHANC", "accepted"),
    ]
    found = {f.id for f in analyse_dicom(ep, {"CT1"}, {"ORTHANC"})}
    assert found == {
        "dicom-unregistered-ae-accepted",
        "dicom-plaintext-accepted",
        "dicom-any-called-ae",
    }
    closed = Endpoint(Target("h", "192.0.2.1", 104), "open", "dicom")
    closed.dicom = [Association("plain", "ZTEXPOSURE", "ANY-SCP", "rejected")]
    assert {f.id for f in analyse_dicom(closed, set(), set())} == {"dicom-plaintext-listener"}


def test_reports_render() -> None:
    ep = Endpoint(Target("h", "192.0.2.1", 104), "open", "dicom")
    ep.dicom = [Association("plain", "ZTEXPOSURE", "ANY-SCP", "accepted", echo_status=0)]
    ep.findings = analyse_dicom(ep, set(), set())
    meta = {"generated_at": "now", "connections": 1, "rate": 1.0}
    assert "| critical |" in report.markdown(meta, [ep])
    assert report.to_json(meta, [ep])["worst"] == "critical"
    coloured = report.table([ep], colour=True)
    assert "\033[" in coloured and "\033[" not in report.table([ep], colour=False)


def test_device_permissions_from_the_demo_policy() -> None:
    policy = load_policy(REPO / "config" / "policy.yaml")
    modality = permissions(policy, {"system/ImagingStudy.c"}, "modality-ct1")
    assert modality[0] == "store on any study (modality-store)"
    assert any("legal-hold-no-store" in p for p in modality)
    assert not any("delete" in p for p in modality)
    ai = permissions(policy, {"system/ImagingStudy.rs"}, "ai-node")
    assert ai[0] == "search, read on studies labelled research:trial-42 (ai-node-trial-42)"
    assert permissions(policy, set(), "nobody") == ["nothing (no allow rule matches its scopes)"]
