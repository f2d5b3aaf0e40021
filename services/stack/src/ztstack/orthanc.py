"""The archive: Orthanc 1.10.1 + DICOMweb 1.7 from Debian, locked down for the gateway only.

Orthanc has no bind-address option and listens on every interface, so the archive is closed by
what a peer must present, not by where it listens (NW-3, DV-1):
- HTTPS only, TLS 1.2+ with ECDHE AEAD suites, a client certificate pinned to the gateway's
  (`gateway-client`), HTTP Basic credentials only the gateway holds, loopback only;
- no DICOM at all: the DICOM server is off. Devices send to the gateway's DIMSE front door
  (DV-4), which forwards what it authorized as STOW-RS; the TLS settings stay so that turning
  the listener on again keeps it closed to anyone but the gateway's pinned certificate.
Every option name below is checked against `Orthanc --config=x.json` of 1.10.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import StackError
from .pki import Pair, write_private
from .rundir import RunDir

AET = "ZTARCHIVE"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# PS3.15 B.12 (BCP 195): ECDHE key exchange with AEAD ciphers only on TLS 1.2; TLS 1.3 suites
# are AEAD by construction. Our keys are EC P-256, so the ECDSA suites are the ones that apply.
TLS12_CIPHERS = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
]
TLS12_ONLY_AND_UP = 4  # civetweb ssl_protocol_version 4 = TLS 1.2 and newer
USERNAME = "gateway"


def check_installed() -> str:
    exe = shutil.which("Orthanc")
    if exe is None or not DICOMWEB_PLUGIN.exists():
        raise StackError(
            "Orthanc or its DICOMweb plugin is not installed",
            "run `make bootstrap` (installs the Debian packages orthanc orthanc-dicomweb)",
        )
    return exe


def build_tls_shim(run: RunDir) -> Path:
    """Compile the civetweb/OpenSSL 3 shim once per run directory (see the C file)."""
    lib = run.orthanc / "lib"
    if (lib / "libssl.so").exists() and (lib / "libcrypto.so").exists():
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise StackError(
            "a C compiler is needed once to make Orthanc's HTTPS work with OpenSSL 3",
            "run `make bootstrap` (installs gcc and libc6-dev)",
        )
    lib.mkdir(parents=True, exist_ok=True)
    src = resources.files("ztstack") / "templates" / "civetweb_openssl3.c"
    c_file = lib / "civetweb_openssl3.c"
    c_file.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    stub = lib / "libcrypto_stub.c"
    stub.write_text("int zt_libcrypto_forwarder;\n", encoding="utf-8")
    for out, source, needed in (
        ("libssl.so", c_file, "libssl.so.3"),
        ("libcrypto.so", stub, "libcrypto.so.3"),
    ):
        cmd = [cc, "-shared", "-fPIC", "-O2", "-o", str(lib / out), str(source),
               "-Wl,--no-as-needed", f"-l:{needed}"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(
                f"building the OpenSSL shim for Orthanc failed: {done.stderr.strip()}",
                "install the Debian packages gcc libc6-dev libssl3 (`make bootstrap`)",
            )
    return lib


def render(run: RunDir, pki: dict[str, Pair], password: str, http_port: int,
           dicom_port: int) -> Path:  # fmt: skip
    """Write orthanc.json and its side files; returns the config path."""
    d = run.orthanc
    for sub in ("storage", "index"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    # civetweb wants certificate and key in one file.
    https_pem = d / "https.pem"
    write_private(https_pem, pki["orthanc"].cert.read_bytes() + pki["orthanc"].key.read_bytes())
    http_trusted = d / "https-trusted-clients.pem"
    http_trusted.write_bytes(pki["gateway-client"].cert.read_bytes())
    dicom_trusted = d / "dicom-trusted-clients.pem"
    dicom_trusted.write_bytes(pki["gateway-client"].cert.read_bytes())
    lua = d / "request-log.lua"
    template = (resources.files("ztstack") / "templates" / "request-log.lua").read_text("utf-8")
    lua.write_text(f"ZT_REQUEST_LOG = {json.dumps(str(d / 'requests.log'))}\n" + template)

    config: dict[str, Any] = {
        "Name": AET,
        "StorageDirectory": str(d / "storage"),
        "IndexDirectory": str(d / "index"),
        "StorageCompression": False,
        "HttpPort": http_port,
        "HttpServerEnabled": True,
        "HttpDescribeErrors": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USERNAME: password},
        "SslEnabled": True,
        "SslCertificate": str(https_pem),
        "SslMinimumProtocolVersion": TLS12_ONLY_AND_UP,
        "SslCiphersAccepted": TLS12_CIPHERS,
        "SslVerifyPeers": True,
        "SslTrustedClientCertificates": str(http_trusted),
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "WebDavEnabled": False,
        "DicomServerEnabled": False,
        "DicomAet": AET,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki["orthanc"].cert),
        "DicomTlsPrivateKey": str(pki["orthanc"].key),
        "DicomTlsTrustedCertificates": str(dicom_trusted),
        "DicomTlsRemoteCertificateRequired": True,
        "DicomModalities": {},
        "DicomModalitiesInDatabase": False,
        "OrthancPeersInDatabase": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": True,
        },
        "LuaScripts": [str(lua)],
        "StableAge": 5,
    }
    path = d / "orthanc.json"
    write_private(path, (json.dumps(config, indent=2) + "\n").encode())
    return path


def command(exe: str, config: Path) -> list[str]:
    return [exe, str(config)]


def environment(shim_dir: Path) -> dict[str, str]:
    return {"LD_LIBRARY_PATH": str(shim_dir)}
