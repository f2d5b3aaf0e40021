"""The EMR simulator (issue 19, `services/emr/`, package `ztemr`): config and start command.

It signs users in at the IdP as the confidential client `emr-simulator` (its private key is
the one the IdP generated for the client, `<run>/idp/data/clients/emr-simulator.jwk.json`),
serves TLS with a leaf of the run's CA, and lists the demo data's studies as imaging orders.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from . import demo_data
from .errors import StackError
from .pki import Pair
from .rundir import RunDir

CLIENT_ID = "emr-simulator"


def url(port: int) -> str:
    return f"https://localhost:{port}"


def check_installed() -> Path:
    if importlib.util.find_spec("ztemr") is None:
        raise StackError("the EMR simulator is not installed", "run `make bootstrap`")
    from .gateway import PYTHON

    return PYTHON if PYTHON.exists() else Path("python3")


def orders() -> list[dict[str, str]]:
    """The demo studies as the EMR's imaging orders (patients from the same demo data)."""
    return [
        {
            "study_instance_uid": s.study_instance_uid,
            "patient_name": s.patient.name.replace("^", ", "),
            "patient_id": s.patient.patient_id,
            "accession_number": s.accession_number,
            "description": s.description,
            "modality": s.modality,
        }
        for s in demo_data.STUDIES
    ]


def render(run: RunDir, pki: dict[str, Pair], port: int, issuer: str, gateway_url: str) -> Path:
    directory = run.root / "emr"
    directory.mkdir(exist_ok=True)
    config = {
        "public_url": url(port),
        "host": "127.0.0.1",
        "port": port,
        "tls_cert": str(pki["emr"].cert),
        "tls_key": str(pki["emr"].key),
        "issuer": issuer,
        "ca_cert": str(pki["ca"].cert),
        "client_id": CLIENT_ID,
        "client_key_file": str(run.idp / "data" / "clients" / f"{CLIENT_ID}.jwk.json"),
        "gateway_url": gateway_url,
        "orders": orders(),
    }
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def command(python: Path, config: Path) -> list[str]:
    return [str(python), "-m", "ztemr", "serve", "--config", str(config)]
