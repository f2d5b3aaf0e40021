"""The archive configuration: every option is one Orthanc 1.10.1 knows, and the lock-down holds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ztstack import orthanc, pki
from ztstack.rundir import RunDir

PLUGIN_OPTIONS = {"DicomWeb"}


@pytest.fixture
def config(tmp_path: Path) -> dict[str, object]:
    run = RunDir.at(tmp_path)
    run.create()
    path = orthanc.render(run, pki.ensure_pki(run.pki), "secret", 18042, 14242)
    data: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_lock_down(config: dict[str, object]) -> None:
    expected = {
        "SslEnabled": True,
        "SslVerifyPeers": True,
        "SslMinimumProtocolVersion": 4,
        "AuthenticationEnabled": True,
        "RemoteAccessAllowed": False,
        "DicomTlsEnabled": True,
        "DicomTlsRemoteCertificateRequired": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "DicomAet": "ZTARCHIVE",
        "RegisteredUsers": {"gateway": "secret"},
    }
    assert {k: config[k] for k in expected} == expected
    # DV-4: the archive takes no DICOM; devices send to the gateway's DIMSE front door.
    assert config["DicomServerEnabled"] is False
    assert config["DicomModalities"] == {}
    for cipher in config["SslCiphersAccepted"]:  # type: ignore[attr-defined]
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc is not installed")
def test_every_option_is_known_to_orthanc(config: dict[str, object], tmp_path: Path) -> None:
    reference = tmp_path / "reference.json"
    subprocess.run(["Orthanc", f"--config={reference}"], capture_output=True, check=True)
    known = set(re.findall(r'"([A-Za-z]+)"\s*:', reference.read_text(encoding="utf-8")))
    assert [k for k in config if k not in known and k not in PLUGIN_OPTIONS] == []
