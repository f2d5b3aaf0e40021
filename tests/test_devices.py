"""Devices (CONTROLS.md DV-1): unknown DIMSE peers are refused at the DICOM door.

The only DICOM listener is the gateway's DIMSE front door (DV-4, tests/test_ingest_integrity.py):
TLS with a required, pinned client certificate, only registered AE titles from their registered
host, and the certificate must be the one registered for that AE title. pynetdicom is the peer;
"stored" is asked of the archive itself.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from ztstack.dicom_objects import CT_IMAGE, instance, part10

pytestmark = pytest.mark.e2e

REGISTERED = "MODALITY_CT1"


# pynetdicom leaves sockets of refused TLS handshakes to the garbage collector; with warnings as
# errors that would surface in whatever test runs next. Each DIMSE attempt therefore runs in
# its own interpreter and reports JSON.
DIMSE_PEER = textwrap.dedent(
    """
    import json, ssl, sys
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification

    a = json.loads(sys.argv[1])
    ae = AE(ae_title=a["calling"])
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    tls_args = None
    if a["tls"]:
        ctx = ssl.create_default_context(cafile=a["ca"])
        if a["cert"]:
            ctx.load_cert_chain(*a["cert"])
        tls_args = (ctx, "localhost")
    out = {"established": False}
    try:
        assoc = ae.associate("127.0.0.1", a["port"], ae_title=a["called"], tls_args=tls_args)
    except (ssl.SSLError, OSError) as e:
        out["error"] = type(e).__name__
    else:
        out["rejected"], out["aborted"] = assoc.is_rejected, assoc.is_aborted
        if assoc.is_established:
            out["established"] = True
            if a["service"] == "C-ECHO":
                status = assoc.send_c_echo()
            else:
                status = assoc.send_c_store(dcmread(a["file"]))
            out["status"] = getattr(status, "Status", None)
            assoc.release()
    print(json.dumps(out))
    """
)


def _dimse(
    stack: dict[str, Any],
    calling_aet: str,
    cert: tuple[str, str] | None,
    tls: bool,
    service: str,
    file: Path | None = None,
) -> dict[str, Any]:
    args = {
        "calling": calling_aet,
        "called": stack["dimse"]["aet"],
        "port": stack["dimse"]["port"],
        "ca": stack["ca_cert"],
        "cert": list(cert) if cert else None,
        "tls": tls,
        "service": service,
        "file": str(file) if file else None,
    }
    done = subprocess.run(
        [sys.executable, "-c", DIMSE_PEER, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _device_cert(stack: dict[str, Any]) -> tuple[str, str]:
    device = stack["dimse"]["registered_aets"][REGISTERED]
    return device["cert"], device["key"]


def _probe_dataset() -> Dataset:
    """A minimal CT image with a fresh UID, so "stored" is a yes/no question for the archive."""
    return instance(
        patient_id="ZT-DV1-PROBE",
        sop_class=CT_IMAGE,
        modality="CT",
        rows=2,
        bits=16,
        pixels=b"\x00\x01" * 4,
        PatientName="Probe^DV1",
    )


def _stored(stack: dict[str, Any], sop_instance_uid: str) -> bool:
    archive = stack["archive"]
    ctx = ssl.create_default_context(cafile=stack["ca_cert"])
    ctx.load_cert_chain(archive["gateway_client_cert"], archive["gateway_client_key"])
    password = Path(archive["password_file"]).read_text(encoding="utf-8").strip()
    r = httpx.post(
        archive["http_url"] + "/tools/lookup",
        content=sop_instance_uid,
        verify=ctx,
        auth=(archive["username"], password),
        timeout=10,
    )
    r.raise_for_status()
    return bool(r.json())


REFUSED_PEERS = {
    # calling AE title, client certificate, TLS
    "unregistered AE title with a valid device certificate": ("ZT_UNKNOWN", "device", True),
    "unregistered AE title without a certificate": ("ZT_UNKNOWN", None, True),
    "registered AE title without a client certificate": (REGISTERED, None, True),
    "registered AE title without TLS": (REGISTERED, None, False),
}


@pytest.mark.control("DV-1")
@pytest.mark.parametrize("peer", list(REFUSED_PEERS))
@pytest.mark.parametrize("service", ["C-ECHO", "C-STORE"])
def test_unknown_peer_refused(
    stack: dict[str, Any], archive_log: Any, tmp_path: Path, peer: str, service: str
) -> None:
    calling, cert_name, tls = REFUSED_PEERS[peer]
    cert = _device_cert(stack) if cert_name == "device" else None
    probe = _probe_dataset()
    file = tmp_path / "probe.dcm"
    file.write_bytes(part10(probe))
    mark = archive_log.mark()
    out = _dimse(stack, calling, cert, tls, service, file)
    # Refused at the association (rejected, aborted, TLS failure) or, at the latest, the
    # DIMSE service itself fails; never a success status.
    assert out.get("status") != 0x0000, out
    assert not out["established"] or out.get("status") is not None, out
    assert archive_log.since(mark) == []
    assert not _stored(stack, probe.SOPInstanceUID)


@pytest.mark.control("DV-1")
def test_registered_device_with_certificate_accepted(stack: dict[str, Any]) -> None:
    """The positive control: the same peer, registered AE title and its certificate over TLS."""
    out = _dimse(stack, REGISTERED, _device_cert(stack), True, "C-ECHO")
    assert out == {"established": True, "rejected": False, "aborted": False, "status": 0}
