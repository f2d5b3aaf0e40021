"""The compose stack (compose/compose.yaml): the same deployment from real images.

`up` prepares the run directory exactly as the native stack does (CA, certificates, secrets),
renders the gateway's and Orthanc's configuration for container paths, writes every variable
compose needs into `<run>/compose.env` (0600), then runs

    docker compose --project-name zt-<hash> --env-file <run>/compose.env -f compose/compose.yaml
        up --build --wait

and writes the same stack.json (mode `compose`). With `ZT_COMPOSE_ARCHIVE=dcm4chee` the
override `compose/dcm4chee.yaml` is added (`-f compose/compose.yaml -f compose/dcm4chee.yaml`):
dcm4chee-arc-light with its LDAP and PostgreSQL, the gateway on the `dicomweb` adapter. Both
archives' files are rendered every time, so one compose.env serves either. Any failure of the
engine (no compose plugin, an image it cannot pull or build, a service that never becomes
healthy) is a `ComposeFailed` with one line saying why; the launcher decides whether to fall
back to native.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from joserfc.jwk import ECKey

from . import gateway, idp, orthanc
from .errors import StackError
from .pki import SERVER, Pair, ensure_ca, ensure_pki, issue_leaf, write_private
from .ports import Ports
from .rundir import REPO_ROOT, RunDir
from .secretfiles import ensure_secret

COMPOSE_FILE = REPO_ROOT / "compose" / "compose.yaml"
# Archives compose can put behind the gateway: the override file each adds to compose.yaml.
ARCHIVE_OVERRIDES: dict[str, Path | None] = {
    "orthanc": None,
    "dcm4chee": REPO_ROOT / "compose" / "dcm4chee.yaml",
}
# dcm4chee-arc's DICOMweb service root for its default AE title (dcm4che/slapd-dcm4chee AE_TITLE).
DCM4CHEE_ROOT = "https://dcm4chee:8443/dcm4chee-arc/aets/DCM4CHEE/rs"
DCM4CHEE_UID = 1023  # wildfly, the user Wildfly runs as in dcm4che/dcm4chee-arc-psql
REALM_YAML = REPO_ROOT / "idp" / "realm.yaml"
VIEWER_DIST = REPO_ROOT / "viewer-config" / "node_modules" / "@ohif" / "app" / "dist"
CONTAINER_UID = 10001  # the containers' user when `make up` runs as root (never root inside)
IN = "/run/zt"  # where the run directory's parts are mounted in the gateway containers
DEVICE_CLIENTS = ("modality-ct1", "ai-node", "dicomweb-gateway", "emr-simulator")
# The DIMSE door sees a device on the host through Docker's port publishing, from the `edge`
# network's gateway address (compose.yaml pins the subnet); a device elsewhere: set its address.
EDGE_PEER = os.environ.get("ZT_COMPOSE_DEVICE_HOST", "172.30.80.1")


class ComposeFailed(StackError):
    """The engine could not pull, build or start the stack (one line in `str()`)."""


def env_name(*parts: str) -> str:
    return "_".join(p.upper().replace("-", "_").replace("/", "_") for p in parts)


def project(run: RunDir) -> str:
    return "zt-" + hashlib.sha256(str(run.root).encode()).hexdigest()[:10]


def env_file(run: RunDir) -> Path:
    return run.root / "compose.env"


def archive_marker(run: RunDir) -> Path:
    return run.root / "compose" / "archive"


def chosen_archive(run: RunDir | None = None) -> str:
    """The archive of this run: the one `up` recorded, else `ZT_COMPOSE_ARCHIVE` (orthanc)."""
    if run is not None and archive_marker(run).is_file():
        return archive_marker(run).read_text(encoding="utf-8").strip()
    name = os.environ.get("ZT_COMPOSE_ARCHIVE", "orthanc")
    if name not in ARCHIVE_OVERRIDES:
        known = ", ".join(ARCHIVE_OVERRIDES)
        raise StackError(f"ZT_COMPOSE_ARCHIVE={name!r} is not one of {known}",
                         "unset it (orthanc) or set it to dcm4chee")  # fmt: skip
    return name


def compose_files(archive: str) -> list[Path]:
    override = ARCHIVE_OVERRIDES[archive]
    return [COMPOSE_FILE, *([override] if override else [])]


def command(run: RunDir, *args: str) -> list[str]:
    files = [a for f in compose_files(chosen_archive(run)) for a in ("-f", str(f))]
    return ["docker", "compose", "--project-name", project(run), "--env-file",
            str(env_file(run)), *files, *args]  # fmt: skip


def _device_jwks(run: RunDir) -> dict[str, str]:
    """A private key per device client (as the local IdP makes them); Keycloak gets the public
    half as `ZT_<CLIENT>_JWKS`; stack.json points at the private one."""
    out = {}
    keys = run.idp / "data" / "clients"
    keys.mkdir(parents=True, exist_ok=True)
    for cid in DEVICE_CLIENTS:
        path = keys / f"{cid}.jwk.json"
        if not path.exists():
            pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            key = ECKey.import_key(pem)
            private = key.as_dict(private=True, kid=cid, use="sig", alg="ES256")
            write_private(path, json.dumps(private).encode())
        private = json.loads(path.read_text(encoding="utf-8"))
        public = {k: v for k, v in private.items() if k != "d"}
        out[env_name("ZT", cid, "JWKS")] = json.dumps({"keys": [public]}, separators=(",", ":"))
    return out


def _users(run: RunDir) -> dict[str, dict[str, Any]]:
    realm = yaml.safe_load(REALM_YAML.read_text(encoding="utf-8"))
    users = {}
    for name, u in realm["users"].items():
        password = ensure_secret(run.secrets / "users" / name) if run.secrets.is_dir() else ""
        users[name] = {
            "password": password,
            "roles": list(u["roles"]),
            "groups": list(u["groups"]),
            "totp_secret": None,  # Keycloak enrols TOTP and WebAuthn at first login
            "patient": u.get("patient"),
        }
    return users


def render(run: RunDir, ports: Ports, pki: dict[str, Pair]) -> dict[str, str]:
    """Write the container configurations and return compose's variables."""
    (run.secrets / "users").mkdir(mode=0o700, exist_ok=True)
    archive_password = ensure_secret(run.secrets / "archive-password")
    db_password = ensure_secret(run.secrets / "gateway-db-password")
    gateway_url = f"https://localhost:{ports.gateway}"
    # The gateway: the native settings, with container paths and PostgreSQL stores.
    base = run.root / "compose"
    (base / "gateway").mkdir(parents=True, exist_ok=True)
    settings = yaml.safe_load(
        gateway.render(
            run, port=ports.gateway, issuer=idp.issuer(ports.idp),
            archive_url="https://orthanc:8042", dimse_port=11112, name="settings-compose.yaml",
        ).read_text(encoding="utf-8")
    )  # fmt: skip
    text = yaml.safe_dump(settings, sort_keys=False).replace(str(run.root), IN)
    settings = yaml.safe_load(text)
    settings["listen"] = {"host": "0.0.0.0", "port": 8443}  # noqa: S104 (inside the container)
    db = f"postgresql://gateway:{db_password}@gateway-db:5432/gateway"
    settings["database_url"] = db
    settings["audit"]["database_url"] = db
    settings["viewer"] = {
        "dist_dir": "/opt/viewer/dist" if VIEWER_DIST.is_dir() else None,
        "config_template": "/opt/viewer/app-config.template.js",
    }
    settings["run_dir"] = f"{IN}/gateway"
    settings["policy"]["file"] = f"{IN}/gateway/policy.yaml"
    settings["policy"]["ingest_rules_file"] = f"{IN}/gateway/ingest-rules.yaml"
    settings["dimse"]["host"] = "0.0.0.0"  # noqa: S104 (inside the container)
    for device in settings["dimse"]["devices"]:
        device["host"] = EDGE_PEER
    for name in ("policy.yaml", "ingest-rules.yaml"):
        (base / "gateway" / name).write_bytes((run.gateway / name).read_bytes())
    write_private(base / "gateway" / "settings.yaml",
                  yaml.safe_dump(settings, sort_keys=False).encode())  # fmt: skip
    # Orthanc: the native lock-down, paths inside the image; its index lives in PostgreSQL.
    tls = base / "orthanc" / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    native = json.loads(
        orthanc.render(run, pki, archive_password, 8042, 4242).read_text(encoding="utf-8")
    )
    for name in ("https.pem", "https-trusted-clients.pem", "dicom-trusted-clients.pem"):
        (tls / name).write_bytes((run.orthanc / name).read_bytes())
    for name in ("orthanc.pem", "orthanc.key"):
        (tls / name).write_bytes((run.pki / name).read_bytes())
    native.update(
        {
            "StorageDirectory": "/var/lib/orthanc/db",
            "IndexDirectory": "/var/lib/orthanc/db",
            "RemoteAccessAllowed": True,  # reachable only on the internal `archive` network
            "SslCertificate": "/run/zt/orthanc/https.pem",
            "SslTrustedClientCertificates": "/run/zt/orthanc/https-trusted-clients.pem",
            "DicomTlsCertificate": "/run/zt/orthanc/orthanc.pem",
            "DicomTlsPrivateKey": "/run/zt/orthanc/orthanc.key",
            "DicomTlsTrustedCertificates": "/run/zt/orthanc/dicom-trusted-clients.pem",
            "LuaScripts": [],
        }
    )
    for key in ("Plugins",):
        native.pop(key, None)
    write_private(base / "orthanc" / "zt.json", json.dumps(native, indent=2).encode())
    keystore_password = ensure_secret(run.secrets / "dcm4chee-keystore-password")
    _render_dcm4chee(run, base, settings, keystore_password)
    uid = os.getuid() or CONTAINER_UID
    gid = os.getgid() if os.getuid() else CONTAINER_UID
    if os.getuid() == 0:  # files stay 0600; the (non-root) container user must own them
        for path in [run.pki, run.secrets, base, *run.pki.rglob("*"), *run.secrets.rglob("*"),
                     *base.rglob("*")]:  # fmt: skip
            os.chown(path, uid, gid)
    _dcm4chee_readable(base)
    variables = {
        "ZT_UID": str(uid),
        "ZT_GID": str(gid),
        "ZT_RUN_DIR": str(run.root),
        "ZT_REPO": str(REPO_ROOT),
        "ZT_VIEWER_DIST": str(VIEWER_DIST if VIEWER_DIST.is_dir() else base / "no-viewer"),
        "ZT_GATEWAY_PORT": str(ports.gateway),
        "ZT_GATEWAY_HTTP_PORT": str(ports.gateway_http),
        "ZT_IDP_PORT": str(ports.idp),
        "ZT_DIMSE_PORT": str(ports.dimse),
        "GATEWAY_URL": gateway_url,
        # The EMR simulator's origin in the realm (issue 19; the native stack runs it).
        "EMR_URL": f"https://localhost:{ports.emr}",
        "ZT_GATEWAY_DB_PASSWORD": db_password,
        "ZT_ARCHIVE_DB_PASSWORD": ensure_secret(run.secrets / "archive-db-password"),
        "ZT_KEYCLOAK_DB_PASSWORD": ensure_secret(run.secrets / "keycloak-db-password"),
        "ZT_KEYCLOAK_ADMIN_PASSWORD": ensure_secret(run.secrets / "keycloak-admin-password"),
        "ZT_DCM4CHEE_DB_PASSWORD": ensure_secret(run.secrets / "dcm4chee-db-password"),
        "ZT_DCM4CHEE_LDAP_PASSWORD": ensure_secret(run.secrets / "dcm4chee-ldap-password"),
        "ZT_DCM4CHEE_LDAP_CONFIG_PASSWORD": ensure_secret(
            run.secrets / "dcm4chee-ldap-config-password"
        ),
        "ZT_DCM4CHEE_KEYSTORE_PASSWORD": keystore_password,
        **_device_jwks(run),
    }
    for name, user in _users(run).items():
        variables[env_name("ZT_PASSWORD", name)] = user["password"]
    (base / "no-viewer").mkdir(exist_ok=True)
    lines = [f"{k}={v}" for k, v in variables.items()]
    write_private(env_file(run), ("\n".join(lines) + "\n").encode())
    return variables


def _render_dcm4chee(
    run: RunDir, base: Path, settings: dict[str, Any], keystore_password: str
) -> None:
    """The gateway's settings for dcm4chee (`dicomweb` adapter, same pinned client certificate)
    and Wildfly's two PKCS#12 stores: key.p12 (the CA-signed server certificate `dcm4chee`) and
    trust.p12 (the gateway's pinned client certificate alone, as a Java trusted entry)."""
    gw = base / "gateway-dcm4chee"
    gw.mkdir(parents=True, exist_ok=True)
    for name in ("policy.yaml", "ingest-rules.yaml"):
        (gw / name).write_bytes((base / "gateway" / name).read_bytes())
    ours = json.loads(json.dumps(settings))
    ours["archive"]["kind"] = "dicomweb"
    ours["archive"]["url"] = DCM4CHEE_ROOT
    write_private(gw / "settings.yaml", yaml.safe_dump(ours, sort_keys=False).encode())
    ca_cert, ca_key, _ = ensure_ca(run.pki)
    server = issue_leaf(run.pki, "dcm4chee", SERVER, ca_cert, ca_key)
    key = serialization.load_pem_private_key(server.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = x509.load_pem_x509_certificate(server.cert.read_bytes())
    client = x509.load_pem_x509_certificate((run.pki / "gateway-client.pem").read_bytes())
    encryption = serialization.BestAvailableEncryption(keystore_password.encode())
    tls = base / "dcm4chee" / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    stores = {
        "key.p12": pkcs12.serialize_key_and_certificates(
            b"dcm4chee", key, cert, [ca_cert], encryption
        ),
        "trust.p12": pkcs12.serialize_java_truststore(
            [pkcs12.PKCS12Certificate(client, b"gateway-client")], encryption
        ),
    }
    for name, data in stores.items():
        write_private(tls / name, data)


def _dcm4chee_readable(base: Path) -> None:
    """Wildfly reads its stores as `wildfly` (1023): owned by it when `make up` runs as root;
    otherwise readable by all, which the stores' encryption (the password is only in
    compose.env, 0600) and the owner-only secrets beside it cover."""
    tls = base / "dcm4chee" / "tls"
    for path in (tls, *tls.iterdir()):
        if os.getuid() == 0:
            os.chown(path, DCM4CHEE_UID, DCM4CHEE_UID)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
    last = lines[-1] if lines else f"exit status {done.returncode}"
    return last[:240]


def up(run: RunDir, ports: Ports, timeout: float = 900) -> dict[str, Any]:
    """Start the compose stack and return stack.json's content (mode `compose`)."""
    pki = ensure_pki(run.pki)
    gateway.copy_policy(run)
    archive = chosen_archive()
    render(run, ports, pki)
    archive_marker(run).write_text(archive + "\n", encoding="utf-8")
    log = run.log("compose")
    try:
        done = subprocess.run(
            command(run, "up", "--build", "--wait", "--quiet-pull", "--detach"),
            capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO_ROOT,
        )  # fmt: skip
    except FileNotFoundError as e:
        raise ComposeFailed("docker is not installed", "use --stack native") from e
    except subprocess.TimeoutExpired as e:
        raise ComposeFailed(f"`docker compose up` did not finish within {timeout:.0f} s",
                            f"read {log}") from e  # fmt: skip
    log.write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        raise ComposeFailed(_one_line(done), f"full output in {log}")
    return stack_data(run, ports, pki)


def down(run: RunDir) -> int:
    if not env_file(run).exists():
        return 0
    done = subprocess.run(command(run, "down"), capture_output=True, text=True, check=False)
    return done.returncode


def _archive_address(archive: str) -> dict[str, Any]:
    if archive == "dcm4chee":  # its DICOM port is configured on loopback (compose/dcm4chee.yaml)
        return {"http_url": DCM4CHEE_ROOT, "dicom_host": "dcm4chee", "dicom_port": 11112,
                "aet": "DCM4CHEE"}  # fmt: skip
    return {"http_url": "https://orthanc:8042", "dicom_host": "orthanc", "dicom_port": 4242,
            "aet": orthanc.AET}  # fmt: skip


def stack_data(run: RunDir, ports: Ports, pki: dict[str, Pair]) -> dict[str, Any]:
    gateway_url = f"https://localhost:{ports.gateway}"
    keys = run.idp / "data" / "clients"
    realm = yaml.safe_load(REALM_YAML.read_text(encoding="utf-8"))
    clients = {
        cid: {
            "grant_types": c["grant_types"],
            "scopes": c["scopes"],
            **({"key_path": str(keys / f"{cid}.jwk.json")} if cid in DEVICE_CLIENTS else {}),
        }
        for cid, c in realm["clients"].items()
    }
    return {
        "mode": "compose",
        "run_dir": str(run.root),
        "compose_project": project(run),
        "gateway_url": gateway_url,
        "gateway_http_url": f"http://localhost:{ports.gateway_http}",
        "dicomweb_url": f"{gateway_url}/dicom-web",
        "viewer_url": f"{gateway_url}/",
        "idp_issuer": idp.issuer(ports.idp),
        "resource": gateway_url,
        "ca_cert": str(pki["ca"].cert),
        "archive": {
            # Inside an internal network only: nothing on the host reaches it (NW-3).
            **_archive_address(chosen_archive(run)),
            "request_log": None,
            "gateway_client_cert": str(pki["gateway-client"].cert),
            "gateway_client_key": str(pki["gateway-client"].key),
            "username": orthanc.USERNAME,
            "password_file": str(run.secrets / "archive-password"),
        },
        "dimse": {
            "host": "localhost",
            "port": ports.dimse,
            "aet": gateway.DOOR_AET,
            "registered_aets": {
                aet: {"cert": str(pki[name].cert), "key": str(pki[name].key)}
                for name, (aet, _host) in gateway.REGISTERED_DEVICES.items()
            },
        },
        "clients": clients,
        "users": _users(run),
        "pids": {},
    }
