"""The local OpenID provider (`idp/local/`, Node oidc-provider): config and start command.

Contract (docs/internals.md, identity contract): the launcher writes `<run>/idp/config.json`
and runs `node idp/local/server.js <config.json>`; on first start the IdP generates the demo
credentials into `<data_dir>/demo-credentials.json`, which the launcher merges into stack.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .errors import StackError
from .pki import Pair
from .rundir import REPO_ROOT, RunDir

SERVER_JS = REPO_ROOT / "idp" / "local" / "server.js"
REALM_FILE = REPO_ROOT / "idp" / "realm.yaml"
REALM_PATH = "/realms/dicomweb"


def issuer(port: int) -> str:
    return f"https://localhost:{port}{REALM_PATH}"


def check_installed() -> str:
    node = shutil.which("node")
    if node is None:
        raise StackError("Node.js is not installed", "run `make bootstrap` (Debian nodejs)")
    if not SERVER_JS.exists():
        raise StackError(f"the local IdP is missing: {SERVER_JS} does not exist",
                         "the identity part (idp/local/) has not landed yet")  # fmt: skip
    if not (SERVER_JS.parent / "node_modules").is_dir():
        raise StackError("the local IdP's npm packages are not installed",
                         "run `make bootstrap` (npm ci in idp/local)")  # fmt: skip
    return node


def render(
    run: RunDir, pki: dict[str, Pair], port: int, gateway_url: str, emr_url: str | None = None
) -> Path:
    config = {
        "issuer": issuer(port),
        "host": "127.0.0.1",
        "port": port,
        "tls_cert": str(pki["idp"].cert),
        "tls_key": str(pki["idp"].key),
        "ca_cert": str(pki["ca"].cert),
        "realm_file": str(REALM_FILE),
        "resource": gateway_url,
        "gateway_url": gateway_url,
        "data_dir": str(run.idp / "data"),
    }
    if emr_url:
        config["emr_url"] = emr_url  # ${EMR_URL} in the realm (issue 19)
    (run.idp / "data").mkdir(parents=True, exist_ok=True)
    path = run.idp / "config.json"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def command(node: str, config: Path) -> list[str]:
    return [node, str(SERVER_JS), str(config)]


def demo_credentials(run: RunDir) -> dict[str, Any]:
    """{"users": {...}, "clients": {...}} as written by the IdP, or empty before first start."""
    path = run.idp / "data" / "demo-credentials.json"
    if not path.exists():
        return {"users": {}, "clients": {}}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return {"users": data.get("users", {}), "clients": data.get("clients", {})}
