"""Issue 18: "How can I tell if my system is exposed?" The exposure check against real peers.

The check runs from an "outside" network namespace (a host of its own, tests/netns.py):
- against the running stack, where one gateway and one DIMSE front door are made reachable
  from that segment (what a deployment publishes), it finds the gateway's HTTPS port, the
  door's TLS port that requires a client certificate, and the archive's HTTPS port that also
  requires one (Orthanc has no bind-address option, docs/stack.md); no finding above "info";
- against a deliberately misconfigured Orthanc 1.10.1 (two instances: one open, plain DICOM
  and plain HTTP; one with default credentials, TLS 1.0 allowed, DICOM TLS without a client
  certificate) it reports each of those problems, and exits 1 for CI.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.netns import Namespace, namespace

pytestmark = pytest.mark.e2e

REPORTS = Path(__file__).resolve().parent.parent / "reports"


@pytest.fixture(scope="module")
def outside() -> Iterator[Namespace]:
    with namespace("out") as ns:
        yield ns


def exposure(
    ns: Namespace, targets: list[str], out: Path, *extra: str
) -> tuple[int, dict[str, Any]]:
    """Run the check inside the namespace; returns (exit code, JSON report)."""
    report = out / "report.json"
    done = subprocess.run(
        ns.command(
            sys.executable,
            "-m",
            "dicomweb_gateway",
            "exposure",
            "--targets",
            ",".join(targets),
            "--json",
            str(report),
            "--markdown",
            str(out / "report.md"),
            "--rate",
            "60",
            "--colour",
            "never",
            *extra,
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, json.loads(report.read_text(encoding="utf-8"))


def _bound(host: str, port: int) -> bool:
    from ztstack.launcher import _bound as bound

    return bound(host, port)


@contextlib.contextmanager
def published_door(stack: dict[str, Any], host: str) -> Iterator[int]:
    """One more DIMSE front door, listening on `host` (the deployment's published address)."""
    from ztstack import gateway, procs
    from ztstack.ports import free_port
    from ztstack.rundir import RunDir

    run = RunDir.at(stack["run_dir"])
    port = free_port()
    settings = gateway.render(
        run,
        port=urlsplit(stack["gateway_url"]).port or 443,
        issuer=stack["idp_issuer"],
        archive_url=stack["archive"]["http_url"],
        name=f"settings-door-{port}.yaml",
        overrides={"dimse": {"host": host, "port": port}},
    )
    svc = procs.Service(
        f"dimse-extra-{port}",
        gateway.dimse_command(gateway.check_installed(), settings),
        lambda: _bound(host, port),
    )
    pid = procs.start(run, svc)
    try:
        procs.wait_healthy(run, svc, pid)
        yield port
    finally:
        procs.stop(run, svc.name)


@pytest.mark.control("NW-3")
def _serving(host: str, port: int) -> bool:
    """The published gateway answers (bound is not enough: uvicorn binds before it serves)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # readiness only; the scan checks the certificate
    try:
        with socket.create_connection((host, port), timeout=3) as raw, ctx.wrap_socket(raw):
            return True
    except OSError:
        return False


def test_the_stack_exposes_only_the_gateway(
    stack: dict[str, Any], extra_gateway: Any, outside: Namespace, tmp_path: Path
) -> None:
    ports = json.loads((Path(stack["run_dir"]) / "ports.json").read_text(encoding="utf-8"))
    host = outside.host_ip
    with (
        extra_gateway({"listen": {"host": host}}, wait_healthy=False) as gw,
        published_door(stack, host) as door,
    ):
        deadline = time.monotonic() + 60
        while not _serving(host, gw.port):
            assert time.monotonic() < deadline, gw.log.read_text(encoding="utf-8")[-2000:]
            time.sleep(0.3)
        targets = [f"{host}:{p}" for p in sorted({*ports.values(), gw.port, door})]
        expected = {gw.port, door, ports["orthanc_http"]}
        for _attempt in range(2):  # once more if the loaded machine timed a connect out
            code, report = exposure(
                outside,
                targets,
                tmp_path,
                "--ca",
                stack["ca_cert"],
                "--fail-on",
                "low",
                "--config",
                str(Path(stack["run_dir"]) / "gateway" / "settings.yaml"),
            )
            seen = {e["port"] for e in report["endpoints"] if e["state"] == "open"}
            if expected <= seen:
                break
    shutil.copy(tmp_path / "report.md", REPORTS / "exposure-stack.md")
    by_port = {e["port"]: e for e in report["endpoints"]}
    open_ports = {p for p, e in by_port.items() if e["state"] == "open"}
    # What is reachable from another segment: the published gateway and door, and the archive's
    # HTTPS port (Orthanc binds every interface) that admits no one without the gateway's
    # pinned client certificate. Everything else listens on loopback only.
    assert open_ports == {gw.port, door, ports["orthanc_http"]}, report["endpoints"]
    assert by_port[gw.port]["service"] == "https"
    for port in (door, ports["orthanc_http"]):
        assert by_port[port]["service"] == "tls"
        assert by_port[port]["tls"]["client_certificate_required"] is True
    assert by_port[door]["dicom"][0]["outcome"] in ("refused", "aborted")
    gateway_tls = by_port[gw.port]["tls"]
    assert gateway_tls["versions"] == {
        "TLSv1.0": False,
        "TLSv1.1": False,
        "TLSv1.2": True,
        "TLSv1.3": True,
    }
    assert gateway_tls["certificate"]["chain_verified"] is True
    statuses = {a["path"]: a["status"] for a in by_port[gw.port]["http"]}
    assert statuses["/dicom-web/studies"] == 401
    assert all(s in (401, 404) for s in statuses.values()), statuses
    above_info = [f for f in report["findings"] if f["severity"] != "info"]
    assert above_info == []
    assert report["worst"] == "info" and code == 0


# --- a deliberately misconfigured archive ------------------------------------------------------


def _orthanc_config(d: Path, kind: str, http: int, dicom: int, pki: Path) -> Path:
    from ztstack.orthanc import DICOMWEB_PLUGIN

    for sub in ("storage", "index"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "Name": "MISCONFIGURED",
        "StorageDirectory": str(d / "storage"),
        "IndexDirectory": str(d / "index"),
        "HttpPort": http,
        "DicomPort": dicom,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": True,
        "DicomServerEnabled": True,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
        },
    }
    if kind == "open":  # everything open, nothing encrypted
        config |= {"AuthenticationEnabled": False, "SslEnabled": False}
    else:  # the tutorial's default user, TLS 1.0 and every suite, DICOM TLS without client certs
        https = d / "https.pem"
        https.write_bytes((pki / "orthanc.pem").read_bytes() + (pki / "orthanc.key").read_bytes())
        config |= {
            "AuthenticationEnabled": True,
            "RegisteredUsers": {"orthanc": "orthanc"},
            "SslEnabled": True,
            "SslCertificate": str(https),
            "SslMinimumProtocolVersion": 0,
            "SslCiphersAccepted": ["ALL:@SECLEVEL=0"],
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(pki / "orthanc.pem"),
            "DicomTlsPrivateKey": str(pki / "orthanc.key"),
            "DicomTlsTrustedCertificates": str(pki / "ca.pem"),
            "DicomTlsRemoteCertificateRequired": False,
        }
    path = d / "orthanc.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def misconfigured(
    stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, int]]:
    """Two Orthanc instances started (and stopped, by PID) by this test."""
    from ztstack.orthanc import build_tls_shim, check_installed
    from ztstack.ports import free_port
    from ztstack.rundir import RunDir

    exe = check_installed()
    shim = build_tls_shim(RunDir.at(stack["run_dir"]))
    pki = Path(stack["run_dir"]) / "pki"
    root = tmp_path_factory.mktemp("misconfigured")
    ports = {name: free_port() for name in ("open_http", "open_dicom", "tls_http", "tls_dicom")}
    started: list[subprocess.Popen[bytes]] = []
    try:
        for kind, http, dicom in (
            ("open", ports["open_http"], ports["open_dicom"]),
            ("tls", ports["tls_http"], ports["tls_dicom"]),
        ):
            d = root / kind
            config = _orthanc_config(d, kind, http, dicom, pki)
            with (d / "orthanc.log").open("wb") as log:
                started.append(
                    subprocess.Popen(
                        [exe, str(config)],
                        cwd=d,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env={"LD_LIBRARY_PATH": str(shim), "PATH": "/usr/bin:/bin"},
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + 30
        while not all(_bound("0.0.0.0", p) for p in ports.values()):  # noqa: S104
            assert all(p.poll() is None for p in started), "a misconfigured Orthanc exited"
            assert time.monotonic() < deadline, "the misconfigured Orthancs did not listen"
            time.sleep(0.3)
        yield ports
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def test_a_misconfigured_archive_is_reported(
    stack: dict[str, Any], misconfigured: dict[str, int], outside: Namespace, tmp_path: Path
) -> None:
    host = outside.host_ip
    targets = [f"{host}:{p}" for p in misconfigured.values()]
    code, report = exposure(outside, targets, tmp_path, "--ca", stack["ca_cert"])
    shutil.copy(tmp_path / "report.md", REPORTS / "exposure-misconfigured.md")
    shutil.copy(tmp_path / "report.json", REPORTS / "exposure-misconfigured.json")
    found: dict[int, set[str]] = {}
    for f in report["findings"]:
        found.setdefault(int(f["endpoint"].rsplit(":", 1)[1]), set()).add(f["id"])
    severity = {f["id"]: f["severity"] for f in report["findings"]}
    # Open instance: plain DICOM from anyone, DICOMweb, WADO and the console open, plain HTTP.
    assert {
        "dicom-unregistered-ae-accepted",
        "dicom-plaintext-accepted",
        "dicom-any-called-ae",
    } <= found[misconfigured["open_dicom"]]
    assert {"dicomweb-open", "wado-open", "console-open", "http-plaintext"} <= found[
        misconfigured["open_http"]
    ]
    # TLS instance: default credentials, TLS 1.0/1.1 and weak suites, no HSTS; DICOM TLS
    # without a client certificate.
    assert {
        "default-credentials",
        "tls-legacy-protocol",
        "tls-weak-suites",
        "hsts-missing",
    } <= found[misconfigured["tls_http"]]
    assert {"dicom-tls-without-client-certificate", "dicom-unregistered-ae-accepted"} <= found[
        misconfigured["tls_dicom"]
    ]
    assert severity["dicom-unregistered-ae-accepted"] == "critical"
    assert severity["default-credentials"] == "critical"
    assert severity["dicomweb-open"] == "critical"
    assert report["worst"] == "critical" and code == 1
    for f in report["findings"]:
        assert f["remediation"] and (f["controls"] or f["id"] == "scan-incomplete")
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Default credentials accepted" in markdown and "| critical |" in markdown


def test_targets_are_explicit_and_bounded(tmp_path: Path) -> None:
    """Never a range wider than a /24; a scan of nothing is an error (exit 2)."""
    for spec in ("10.0.0.0/23:104", "[fd00::/112]:104", "", "host-without-port"):
        done = subprocess.run(
            [sys.executable, "-m", "dicomweb_gateway", "exposure", "--targets", spec],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, (spec, done.stdout, done.stderr)
