"""Issue 18: a legacy modality behind the TLS bridge (DV-2) and the device inventory (DV-3).

A "modality" network namespace holds DCMTK's storescu, a plain-DIMSE-only device; the launcher
starts a bridge for it (`ztstack bridge add`) listening on the host's end of the modality's
segment. The archive must show the instances arriving through the DIMSE front door with the
bridge's pinned certificate as the device; every other peer (another namespace, another AE
title, another service) is refused, and every association, transfer and refusal is in the
gateway's audit store.
"""

from __future__ import annotations

import json
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dicomweb_gateway.audit.store import AuditStore, Filters

from tests.dicom_parts import new_instance, part10
from tests.netns import Namespace, namespace

pytestmark = pytest.mark.e2e

LEGACY = "us-legacy1"
LEGACY_AET = "US_LEGACY1"
BRIDGE_AET = "ZTBRIDGE"
MFA = "urn:zt:acr:mfa"


@pytest.fixture(scope="module")
def modality() -> Iterator[Namespace]:
    with namespace("mod") as ns:
        yield ns


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[Namespace]:
    with namespace("oth") as ns:
        yield ns


def ztstack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztstack", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def bridge(stack: dict[str, Any], modality: Namespace) -> Iterator[dict[str, Any]]:
    """The launcher's bridge for the legacy device at the modality's address."""
    from ztstack.ports import free_port

    port = free_port()
    run_dir = stack["run_dir"]
    done = ztstack(
        "bridge",
        "add",
        "--run-dir",
        run_dir,
        "--name",
        LEGACY,
        "--ae-title",
        LEGACY_AET,
        "--modality-host",
        modality.ip,
        "--listen",
        f"{modality.host_ip}:{port}",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield {"host": modality.host_ip, "port": port}
    finally:
        removed = ztstack("bridge", "remove", "--run-dir", run_dir, "--name", LEGACY)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        settle(stack)


STORED_AT: list[float] = []
STABLE_AGE = 5  # orthanc.json StableAge: the change feed reports new studies this much later


def settle(stack: dict[str, Any]) -> None:
    """Let the gateway's change feed finish with the studies stored here (it reads them from
    the archive once they are stable), so later tests' "the archive saw nothing" holds."""
    if not STORED_AT:
        return
    log = Path(stack["archive"]["request_log"])
    time.sleep(max(0.0, STORED_AT[-1] + STABLE_AGE + 2 - time.monotonic()))
    deadline, size, quiet_since = time.monotonic() + 30, -1, time.monotonic()
    while time.monotonic() < deadline:
        now_size = log.stat().st_size if log.exists() else 0
        if now_size != size:
            size, quiet_since = now_size, time.monotonic()
        elif time.monotonic() - quiet_since >= 3:
            return
        time.sleep(0.5)


@pytest.fixture(scope="module")
def settings(stack: dict[str, Any]) -> dict[str, Any]:
    path = Path(stack["run_dir"]) / "gateway" / "settings.yaml"
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def audit(settings: dict[str, Any]) -> Iterator[AuditStore]:
    store = AuditStore(settings["audit"]["database_url"])
    yield store
    store.dispose()


def audit_mark(settings: dict[str, Any]) -> int:
    db = settings["audit"]["database_url"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        try:
            row = conn.execute("SELECT coalesce(max(seq), 0) FROM audit_record").fetchone()
        except sqlite3.OperationalError:  # a fresh stack: nothing audited yet, no table yet
            return 0
        return int(row[0])


def since(audit: AuditStore, mark: int) -> list[dict[str, Any]]:
    return audit.search(Filters(after_seq=mark, limit=1000))


def since_until(
    audit: AuditStore, mark: int, wanted: Callable[[dict[str, Any]], bool], seconds: float = 15
) -> list[dict[str, Any]]:
    """The records after `mark` once one of them is `wanted`: the bridge audits an
    association's end (release, rejection, abort) from pynetdicom's event handlers, which run
    just after the peer has its answer. Bounded; the caller's assertions report a miss."""
    deadline = time.monotonic() + seconds
    while True:
        rows = since(audit, mark)
        if any(wanted(r) for r in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


@pytest.fixture(scope="module")
def archive(stack: dict[str, Any]) -> Iterator[httpx.Client]:
    a = stack["archive"]
    ctx = ssl.create_default_context(cafile=stack["ca_cert"])
    ctx.load_cert_chain(a["gateway_client_cert"], a["gateway_client_key"])
    password = Path(a["password_file"]).read_text(encoding="utf-8").strip()
    with httpx.Client(
        base_url=a["http_url"], verify=ctx, auth=(a["username"], password), timeout=30
    ) as client:
        yield client


def stored(archive: httpx.Client, sop: str) -> bool:
    r = archive.post("/tools/lookup", content=sop)
    r.raise_for_status()
    return any(hit["Type"] == "Instance" for hit in r.json())


def dcmtk(
    ns: Namespace,
    tool: str,
    calling: str,
    bridge: dict[str, Any],
    *files: Path,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ns.command(
            tool,
            "-aet",
            calling,
            "-aec",
            BRIDGE_AET,
            *extra,
            bridge["host"],
            str(bridge["port"]),
            *map(str, files),
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def instances(tmp_path: Path, n: int) -> list[tuple[Path, Any]]:
    out = []
    for i in range(n):
        ds = new_instance()
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(part10(ds))
        out.append((path, ds))
    return out


@pytest.mark.control("DV-2")
def test_a_legacy_modality_stores_through_the_bridge(
    stack: dict[str, Any],
    bridge: dict[str, Any],
    modality: Namespace,
    archive: httpx.Client,
    settings: dict[str, Any],
    audit: AuditStore,
    tmp_path: Path,
) -> None:
    files = instances(tmp_path, 2)
    mark = audit_mark(settings)
    done = dcmtk(modality, "storescu", LEGACY_AET, bridge, *(p for p, _ in files))
    STORED_AT.append(time.monotonic())
    assert done.returncode == 0, done.stdout + done.stderr
    for _, ds in files:
        assert stored(archive, ds.SOPInstanceUID)
    # The bridge writes the association's Logout once the release is done, which may be just
    # after storescu has exited: wait (bounded) for it rather than racing it.
    rows = since_until(
        audit, mark, lambda r: r["event_types"] == "110123" and r["user_id"] == LEGACY
    )
    for _, ds in files:
        per_study = [r for r in rows if ds.StudyInstanceUID in r["studies"]]
        # The door: the instance arrived over DICOM TLS from the bridge's certificate (the door's
        # device bridge-<name>); the bridge: the transfer from the legacy device and its address.
        door = [r for r in per_study if r["user_id"] == f"bridge-{LEGACY}"]
        relay = [r for r in per_study if r["user_id"] == LEGACY]
        assert [(r["event_id"], r["event_action"], r["outcome"]) for r in door] == [
            ("110104", "C", 0)
        ]
        assert [(r["event_id"], r["event_action"], r["outcome"]) for r in relay] == [
            ("110104", "C", 0)
        ]
        assert f'NetworkAccessPointID="{modality.ip}"' in relay[0]["message"]
        assert f"AETITLES={LEGACY_AET}" in relay[0]["message"]
    sessions = [
        r["event_types"] for r in rows if r["event_id"] == "110114" and r["user_id"] == LEGACY
    ]
    assert sessions == ["110122", "110123"]  # one association: Login, then Logout
    assert not [r for r in rows if r["outcome"] != 0], rows
    # The chain still verifies and every record has the A.5 structure.
    assert audit.verify() == [] and audit.check_content() == []


REFUSED = {
    "another AE title from the modality's address": ("modality", "OTHER_AE", "storescu"),
    "the modality's AE title from another namespace": ("elsewhere", LEGACY_AET, "storescu"),
    "another service (C-FIND) from the modality": ("modality", LEGACY_AET, "findscu"),
}


@pytest.mark.control("DV-2")
@pytest.mark.parametrize("case", list(REFUSED))
def test_the_bridge_refuses_every_other_peer_and_service(
    stack: dict[str, Any],
    bridge: dict[str, Any],
    modality: Namespace,
    elsewhere: Namespace,
    archive: httpx.Client,
    settings: dict[str, Any],
    audit: AuditStore,
    tmp_path: Path,
    case: str,
) -> None:
    where, calling, tool = REFUSED[case]
    ns = modality if where == "modality" else elsewhere
    [(path, ds)] = instances(tmp_path, 1)
    mark = audit_mark(settings)
    if tool == "findscu":
        done = dcmtk(ns, "findscu", calling, bridge, extra=("-S", "-k", "QueryRetrieveLevel=STUDY"))
    else:
        done = dcmtk(ns, "storescu", calling, bridge, path)
    assert done.returncode != 0, done.stdout + done.stderr
    assert not stored(archive, ds.SOPInstanceUID)
    rows = since_until(audit, mark, lambda r: r["event_id"] == "110113")
    alerts = [r for r in rows if r["event_id"] == "110113"]
    assert len(alerts) == 1, rows
    alert = alerts[0]
    assert alert["event_types"] == "110126" and alert["outcome"] == 4
    assert f'NetworkAccessPointID="{ns.ip}"' in alert["message"]
    if tool == "storescu" and where == "modality":
        assert "AETITLES=OTHER_AE" in alert["message"]
    # Nothing reached the door.
    assert not [r for r in since(audit, mark) if r["user_id"] == f"bridge-{LEGACY}"]


def devices(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomweb_gateway",
            "devices",
            "list",
            "--json",
            "--config",
            str(Path(stack["run_dir"]) / "gateway" / "settings.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {d["name"]: d for d in json.loads(done.stdout)}


@pytest.mark.control("DV-3")
def test_the_device_inventory(
    stack: dict[str, Any],
    bridge: dict[str, Any],
    modality: Namespace,
    https: httpx.Client,
    tokens: Any,
) -> None:
    done = dcmtk(modality, "echoscu", LEGACY_AET, bridge)
    assert done.returncode == 0, done.stdout + done.stderr
    inventory = devices(stack)
    legacy = inventory[f"bridge-{LEGACY}"]
    assert legacy["kind"] == "legacy" and legacy["registered"] is True
    assert legacy["ae_title"] == LEGACY_AET and legacy["host"] == modality.ip
    assert legacy["last_echo_at"] is not None and legacy["last_seen_at"] is not None
    assert legacy["last_address"] == "127.0.0.1"  # the bridge, towards the door
    assert legacy["last_tls"].startswith("TLSv1.")
    assert 0 < legacy["certificate_days_left"] <= 2
    assert "store on any study (modality-store)" in legacy["may"]
    assert "plain DIMSE only from" in legacy["tls"]
    ct1 = inventory["modality-ct1"]
    assert ct1["kind"] == "dimse" and ct1["certificate_sha256"]
    assert "pinned client certificate" in ct1["tls"]
    # DICOMweb clients from the identity provider, with what each may do.
    assert inventory["ai-node"]["kind"] == "dicomweb"
    assert any("ai-node-trial-42" in m for m in inventory["ai-node"]["may"])
    assert "dicomweb-gateway" not in inventory
    # The page: admin role behind a fresh MFA login; anyone else is refused.
    url = stack["gateway_url"] + "/admin/devices"
    assert https.get(url).status_code == 401
    # A clinician with a fresh MFA login passes every token check and step-up: the role is
    # what refuses them (an action on no study is decided by the rules too).
    clinician = tokens.user(
        "north-clinician", "openid user/ImagingStudy.rs", acr_values=MFA, max_age=300
    )
    refused = https.get(url, headers={"Authorization": f"Bearer {clinician.access_token}"})
    assert refused.status_code == 403 and "devices" not in refused.text
    weak = tokens.user("admin", "openid")
    r = https.get(url, headers={"Authorization": f"Bearer {weak.access_token}"})
    assert r.status_code == 401 and "insufficient_user_authentication" in r.headers.get(
        "www-authenticate", ""
    )
    admin = tokens.user("admin", "openid", acr_values=MFA, max_age=300)
    bearer = {"Authorization": f"Bearer {admin.access_token}"}
    r = https.get(url, headers=bearer)
    assert r.status_code == 200, r.text
    names = {d["name"] for d in r.json()["devices"]}
    assert {f"bridge-{LEGACY}", "modality-ct1", "ai-node"} <= names
    page = https.get(url, headers={**bearer, "Accept": "text/html"})
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert LEGACY_AET in page.text and "<table>" in page.text
