"""The gateway and its plain-HTTP redirector: settings file and start commands.

The settings file follows `services/gateway/settings.example.yaml` (the gateway's own
template wins; docs/internals.md has the same shape) with `<run>` and `<repo>` replaced and the
ports of this run filled in. Tests start extra gateways with overrides (`extra_gateway`).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import yaml

from .errors import StackError
from .rundir import REPO_ROOT, RunDir
from .secretfiles import ensure_secret

EXAMPLE = REPO_ROOT / "services" / "gateway" / "settings.example.yaml"
POLICY_SOURCES = {
    "policy.yaml": REPO_ROOT / "config" / "policy.yaml",
    "ingest-rules.yaml": REPO_ROOT / "config" / "ingest-rules.yaml",
}
PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
DOOR_AET = "ZTGATEWAY"
# name -> AE title, host; each registered device has a pinned client certificate of that name
# (pki.LEAVES) and sends to the DIMSE front door (DV-4).
REGISTERED_DEVICES = {"modality-ct1": ("MODALITY_CT1", "127.0.0.1")}
# Legacy modalities behind a TLS bridge (DV-2): `<run>/gateway/legacy-devices.yaml`, a list of
# {name, ae_title, host, listen_host, listen_port[, bridge_ae_title, scopes]} written by
# `ztstack bridge add` (or by hand). Each bridge has the pinned client certificate
# `bridge-<name>` and is started by `up` as service `bridge-<name>`.
LEGACY_FILE = "legacy-devices.yaml"
LEGACY_KEYS = {"name", "ae_title", "host", "listen_host", "listen_port", "bridge_ae_title",
               "scopes"}  # fmt: skip


def legacy_devices(run: RunDir) -> list[dict[str, Any]]:
    path = run.gateway / LEGACY_FILE
    if not path.exists():
        return []
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise StackError(f"{path}: expected a list of legacy devices", "see docs/exposure.md")
    for entry in data:
        unknown = set(entry) - LEGACY_KEYS
        missing = {"name", "ae_title", "host", "listen_host", "listen_port"} - set(entry)
        if unknown or missing:
            raise StackError(f"{path}: {entry.get('name', '?')}: unknown keys {sorted(unknown)}, "
                             f"missing {sorted(missing)}", "see docs/exposure.md")  # fmt: skip
    return data


def write_legacy_devices(run: RunDir, devices: list[dict[str, Any]]) -> None:
    path = run.gateway / LEGACY_FILE
    path.write_text(yaml.safe_dump(devices, sort_keys=False), encoding="utf-8")


def bridge_names(run: RunDir) -> list[str]:
    return [f"bridge-{d['name']}" for d in legacy_devices(run)]


def check_installed() -> Path:
    if importlib.util.find_spec("dicomweb_gateway") is None:
        raise StackError("the gateway package is not installed", "run `make bootstrap`")
    if importlib.util.find_spec("dicomweb_gateway.__main__") is None:
        raise StackError(
            "the gateway has no entry point yet (dicomweb_gateway/__main__.py is missing)",
            "the gateway part has not landed yet; `--only orthanc,idp` starts the rest",
        )
    return PYTHON if PYTHON.exists() else Path(shutil.which("python3") or "python3")


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def base_settings(run: RunDir) -> dict[str, Any]:
    if not EXAMPLE.exists():
        raise StackError(f"{EXAMPLE} is missing", "the gateway part has not landed yet")
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace("<run>", str(run.root)).replace("<repo>", str(REPO_ROOT))
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def copy_policy(run: RunDir) -> None:
    """Seed the run's policy files from config/, refreshing them when the repo copy is newer."""
    for name, src in POLICY_SOURCES.items():
        dst = run.gateway / name
        if src.exists() and (not dst.exists() or src.stat().st_mtime > dst.stat().st_mtime):
            shutil.copyfile(src, dst)


def render(
    run: RunDir,
    *,
    port: int,
    issuer: str,
    archive_url: str,
    dimse_port: int = 11112,
    edge: dict[str, Any] | None = None,
    name: str = "settings.yaml",
    overrides: dict[str, Any] | None = None,
) -> Path:
    url = f"https://localhost:{port}"
    settings = deep_merge(
        base_settings(run),
        {
            "public_url": url,
            "listen": {"host": "127.0.0.1", "port": port},
            "oidc": {"issuer": issuer},
            "archive": {"url": archive_url},
            "dimse": {
                "host": "127.0.0.1",
                "port": dimse_port,
                "ae_title": DOOR_AET,
                "devices": [
                    {
                        "name": name,
                        "ae_title": aet,
                        "host": host,
                        "certificate": str(run.pki / f"{name}.pem"),
                    }
                    for name, (aet, host) in REGISTERED_DEVICES.items()
                ],
                "legacy": [
                    {
                        **device,
                        "certificate": str(run.pki / f"bridge-{device['name']}.pem"),
                        "key": str(run.pki / f"bridge-{device['name']}.key"),
                        "ca_cert": str(run.pki / "ca.pem"),
                    }
                    for device in legacy_devices(run)
                ],
            },
        },
    )
    if edge is not None:
        # Behind the edge: a Unix socket in the run directory, TLS ends at nginx.
        settings["listen"] = {"host": "127.0.0.1", "port": port, "uds": edge["socket"]}
        settings["edge"] = {
            "secret_file": edge["secret_file"],
            "decision_ttl_seconds": edge["decision_ttl_seconds"],
            "access_log": edge["access_log"],
        }
    # DA-1: the key of the de-identified views' pseudonyms, generated once per run directory.
    deid_key = run.secrets / "deid-key"
    ensure_secret(deid_key, 32)
    settings["deidentification"] = {"key_file": str(deid_key)}
    viewer = settings.get("viewer") or {}
    if viewer.get("dist_dir") and not Path(viewer["dist_dir"]).is_dir():
        viewer["dist_dir"] = None  # OHIF not installed (yet): the gateway serves no viewer
    if overrides:
        settings = deep_merge(settings, overrides)
    copy_policy(run)
    path = run.gateway / name
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


def serve_command(python: Path, settings: Path) -> list[str]:
    return [str(python), "-m", "dicomweb_gateway", "serve", "--config", str(settings)]


def edge_audit_command(python: Path, settings: Path) -> list[str]:
    return [str(python), "-m", "dicomweb_gateway", "edge-audit", "--config", str(settings)]


def dimse_command(python: Path, settings: Path) -> list[str]:
    return [str(python), "-m", "dicomweb_gateway", "dimse", "--config", str(settings)]


def bridge_command(python: Path, settings: Path, name: str) -> list[str]:
    return [str(python), "-m", "dicomweb_gateway", "bridge", "--config", str(settings),
            "--device", name]  # fmt: skip


def redirect_command(python: Path, port: int, target: str) -> list[str]:
    return [str(python), "-m", "dicomweb_gateway", "redirect", "--port", str(port),
            "--target", target]  # fmt: skip
