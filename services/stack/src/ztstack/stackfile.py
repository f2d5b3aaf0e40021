"""`<run>/stack.json`: the stable contract with tests and outside tools (docs/internals.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import gateway, orthanc
from .pki import Pair
from .ports import Ports
from .rundir import RunDir


def build(
    run: RunDir,
    ports: Ports,
    pki: dict[str, Pair],
    issuer: str,
    credentials: dict[str, Any],
    pids: dict[str, int],
) -> dict[str, Any]:
    gateway_url = f"https://localhost:{ports.gateway}"
    registered = {
        aet: {"cert": str(pki[name].cert), "key": str(pki[name].key)}
        for name, (aet, _host) in gateway.REGISTERED_DEVICES.items()
    }
    return {
        "mode": "native",
        "run_dir": str(run.root),
        "gateway_url": gateway_url,
        "gateway_http_url": f"http://localhost:{ports.gateway_http}",
        "dicomweb_url": f"{gateway_url}/dicom-web",
        "viewer_url": f"{gateway_url}/",
        "emr_url": f"https://localhost:{ports.emr}",
        "idp_issuer": issuer,
        "resource": gateway_url,
        "ca_cert": str(pki["ca"].cert),
        "archive": {
            "http_url": f"https://localhost:{ports.orthanc_http}",
            "dicom_host": "localhost",
            "dicom_port": ports.orthanc_dicom,
            "aet": orthanc.AET,
            "request_log": str(run.orthanc / "requests.log"),
            "gateway_client_cert": str(pki["gateway-client"].cert),
            "gateway_client_key": str(pki["gateway-client"].key),
            "username": orthanc.USERNAME,
            "password_file": str(run.secrets / "archive-password"),
        },
        "dimse": {
            "host": "localhost",
            "port": ports.dimse,
            "aet": gateway.DOOR_AET,
            "registered_aets": registered,
            "legacy": legacy(run),
        },
        "clients": credentials.get("clients", {}),
        "users": credentials.get("users", {}),
        "pids": pids,
    }


def legacy(run: RunDir) -> dict[str, Any]:
    """Legacy devices behind a TLS bridge: name -> where the modality sends plain DIMSE."""
    return {
        d["name"]: {
            "ae_title": d["ae_title"],
            "host": d["host"],
            "listen_host": d["listen_host"],
            "listen_port": d["listen_port"],
            "bridge_ae_title": d.get("bridge_ae_title", "ZTBRIDGE"),
            "door_device": f"bridge-{d['name']}",
            "cert": str(run.pki / f"bridge-{d['name']}.pem"),
        }
        for d in gateway.legacy_devices(run)
    }


def write(run: RunDir, data: dict[str, Any]) -> Path:
    # 0600: it carries the demo users' passwords and TOTP secrets.
    path = run.stack_json
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def read(run: RunDir) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(run.stack_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data
