"""The device inventory (DV-3): every DICOM and DICOMweb peer the deployment knows.

Kept in the gateway's policy store (table `device_inventory`, migration 0004):
- registered DIMSE devices (`dimse.devices`) and legacy devices behind a TLS bridge
  (`dimse.legacy`, listed under the door's name for them, `bridge-<name>`): AE title, address,
  pinned certificate (SHA-256 and expiry), TLS status, and what the policy lets each do;
- DICOMweb clients of the identity provider (`devices sync --clients FILE`, the launcher passes
  the IdP's client list): client id, grant types, scopes, and what the policy lets each do;
- what the DIMSE front door saw: last association, last successful C-ECHO and C-STORE, from
  which address, over which TLS version and suite.

The door syncs the DIMSE entries when it starts; `dicomweb-gateway devices sync` does it on
demand; `devices list` prints the table; `GET /admin/devices` shows it to the admin role behind
a fresh MFA login (admin.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import html
import json
import ssl
import sys
from pathlib import Path
from typing import Any

from cryptography import x509

from .policy import Policy
from .settings import Settings, SettingsError, load_settings
from .store import PolicyStore
from .store.models import DeviceRecord

DIMSE_TLS = (
    "DICOM TLS 1.2/1.3 to the front door; pinned client certificate bound to AE title and address"
)


def _certificate(path: Path) -> tuple[str | None, dt.datetime | None]:
    try:
        pem = path.read_text(encoding="ascii")
        der = ssl.PEM_cert_to_DER_cert(pem)
    except (OSError, ValueError):
        return None, None
    cert = x509.load_der_x509_certificate(der)
    return hashlib.sha256(der).hexdigest(), cert.not_valid_after_utc


def _labels(rule: Any) -> str:
    parts = []
    if rule.labels_any:
        parts.append("labelled " + " or ".join(rule.labels_any))
    if rule.labels_all:
        parts.append("labelled " + " and ".join(rule.labels_all))
    if rule.labels_none:
        parts.append("not labelled " + ", ".join(rule.labels_none))
    if rule.study_known is False:
        parts.append("new studies only")
    if rule.unlabelled:
        parts.append("unlabelled studies")
    return f" on studies {'; '.join(parts)}" if parts else " on any study"


def permissions(policy: Policy, scopes: set[str], client_id: str) -> list[str]:
    """What the policy lets a non-person principal (a device or a client_credentials client)
    do: the allow rules and the denials that can apply to it, each with its rule id."""
    allows: list[str] = []
    denials: list[tuple[Any, list[str]]] = []
    may: set[str] = set()
    for rule in policy.rules:
        if rule.roles is not None or rule.groups is not None or rule.patient is not None:
            continue
        if rule.scopes is not None and not scopes & set(rule.scopes):
            continue
        if rule.clients is not None and client_id not in rule.clients:
            continue
        if rule.break_glass:
            continue
        actions = [a.value for a in rule.actions or ()]
        if rule.effect == "allow":
            allows.append(f"{', '.join(actions)}{_labels(rule)} ({rule.id})")
            may.update(actions)
        else:
            denials.append((rule, actions))
    if not allows:
        return ["nothing (no allow rule matches its scopes)"]
    # Denials matter only for what it may do at all.
    for rule, actions in denials:
        relevant = [a for a in actions if a in may]
        if relevant:
            allows.append(f"never {', '.join(relevant)}{_labels(rule)} ({rule.id})")
    return allows


def registered(
    settings: Settings, policy: Policy, clients: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The inventory entries the configuration names (without what the door observed)."""
    entries: list[dict[str, Any]] = []
    dimse = settings.dimse
    if dimse is not None:
        legacy = {d.device_name: d for d in dimse.legacy}
        for device in dimse.all_devices():
            fingerprint, not_after = _certificate(device.certificate)
            client_id = device.client_id or device.name
            bridged = legacy.get(device.name)
            tls = DIMSE_TLS
            if bridged is not None:
                tls = (
                    f"legacy: plain DIMSE only from {bridged.host} to its bridge on "
                    f"{bridged.listen_host}:{bridged.listen_port}; DICOM TLS from the bridge "
                    "(pinned certificate)"
                )
            entries.append(
                {
                    "name": device.name,
                    "kind": "legacy" if bridged else "dimse",
                    "ae_title": device.ae_title.strip(),
                    "host": bridged.host if bridged else device.host,
                    "client_id": client_id,
                    "scopes": " ".join(device.scopes),
                    "permissions": json.dumps(permissions(policy, set(device.scopes), client_id)),
                    "tls": tls,
                    "certificate_sha256": fingerprint,
                    "certificate_not_after": not_after,
                }
            )
    for client_id, client in sorted((clients or {}).items()):
        if client_id == "dicomweb-gateway":
            continue  # the gateway itself
        grants = list(client.get("grant_types", []))
        scopes = [s for s in client.get("scopes", []) if s not in ("openid", "profile")]
        if "client_credentials" in grants:
            may = permissions(policy, set(scopes), client_id)
        else:
            may = [
                "on behalf of a signed-in user: the user's roles and groups decide, within "
                "the token's scopes"
            ]
        entries.append(
            {
                "name": client_id,
                "kind": "dicomweb",
                "ae_title": None,
                "host": None,
                "client_id": client_id,
                "scopes": " ".join(scopes),
                "permissions": json.dumps(may),
                "tls": "HTTPS (TLS 1.2/1.3) with OAuth access tokens ("
                + (", ".join(grants) or "no grant")
                + ")",
                "certificate_sha256": None,
                "certificate_not_after": None,
            }
        )
    return entries


async def sync(
    store: PolicyStore,
    settings: Settings,
    policy: Policy,
    clients: dict[str, Any] | None = None,
) -> int:
    entries = registered(settings, policy, clients)
    kinds = {"dimse", "legacy"} | ({"dicomweb"} if clients is not None else set())
    await store.sync_devices(entries, kinds, dt.datetime.now(dt.UTC))
    return len(entries)


def as_dict(row: DeviceRecord, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or dt.datetime.now(dt.UTC)

    def when(value: dt.datetime | None) -> str | None:
        return value.isoformat(timespec="seconds") if value else None

    days = None
    if row.certificate_not_after is not None:
        days = round((row.certificate_not_after - now).total_seconds() / 86400, 1)
    return {
        "name": row.name,
        "kind": row.kind,
        "registered": row.registered,
        "ae_title": row.ae_title,
        "host": row.host,
        "client_id": row.client_id,
        "scopes": row.scopes.split(),
        "may": json.loads(row.permissions or "[]"),
        "tls": row.tls,
        "certificate_sha256": row.certificate_sha256,
        "certificate_not_after": when(row.certificate_not_after),
        "certificate_days_left": days,
        "last_seen_at": when(row.last_seen_at),
        "last_echo_at": when(row.last_echo_at),
        "last_store_at": when(row.last_store_at),
        "last_address": row.last_address,
        "last_tls": row.last_tls,
    }


COLUMNS = [
    ("name", "NAME"),
    ("kind", "KIND"),
    ("ae_title", "AE TITLE"),
    ("host", "HOST"),
    ("certificate_days_left", "CERT DAYS"),
    ("last_echo_at", "LAST C-ECHO"),
    ("last_seen_at", "LAST SEEN"),
    ("last_tls", "LAST TLS"),
    ("may", "MAY"),
]


def _text(value: Any) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    return str(value)


def table(devices: list[dict[str, Any]]) -> str:
    rows = [[title for _, title in COLUMNS]]
    for d in devices:
        row = [_text(d[key]) for key, _ in COLUMNS]
        if not d["registered"]:
            row[1] += " (unregistered)"
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    return (
        "\n".join(
            "  ".join([*(r[i].ljust(widths[i]) for i in range(len(widths))), r[-1]]).rstrip()
            for r in rows
        )
        + "\n"
    )


def html_page(devices: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in COLUMNS)
    head += "<th>TLS</th>"
    body = []
    for d in devices:
        cells = "".join(f"<td>{html.escape(_text(d[key]))}</td>" for key, _ in COLUMNS)
        cells += f"<td>{html.escape(d['tls'])}</td>"
        body.append(f"<tr{'' if d['registered'] else ' class=gone'}>{cells}</tr>")
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Device inventory</title>"
        "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        "tr.gone{color:#999}</style><h1>Device inventory</h1>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></html>"
    )


async def _run(args: argparse.Namespace, clients: dict[str, Any] | None) -> int:
    from .policy import load_policy

    settings = load_settings(args.config)
    store = PolicyStore(settings.database_url)
    await asyncio.to_thread(store.migrate)
    try:
        if args.command == "sync":
            n = await sync(store, settings, load_policy(settings.policy.file), clients)
            print(f"device inventory: {n} registered peers")
            return 0
        devices = [as_dict(r) for r in await store.devices()]
        if args.json:
            print(json.dumps(devices, indent=2))
        else:
            sys.stdout.write(table(devices))
        return 0
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomweb-gateway devices", description=__doc__)
    parser.add_argument("command", choices=["list", "sync"])
    parser.add_argument("--config", required=True, help="gateway settings YAML file")
    parser.add_argument("--clients", help="sync: JSON client_id -> {grant_types, scopes}")
    parser.add_argument("--json", action="store_true", help="list: JSON instead of a table")
    args = parser.parse_args(argv)
    clients = None
    if args.clients:
        clients = json.loads(Path(args.clients).read_text(encoding="utf-8"))
    try:
        return asyncio.run(_run(args, clients))
    except SettingsError as exc:
        print(f"dicomweb-gateway devices: {exc}", file=sys.stderr)
        return 2
