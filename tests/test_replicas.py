"""Two gateways, one PostgreSQL, one archive (issue 15, AO-3; faults AO-2).

A dedicated throwaway PostgreSQL cluster for this module (it is stopped and started by the
fault tests, so nothing else shares it) holds the two replicas' policy store, study index,
replay cache, grants (database `gateway`) and audit chain (database `audit`). Both replicas
run one worker each, with their own spill directories, against the test stack's archive and
identity provider. No mock of the database anywhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_cli import generate_key, make_proof
from dicomweb_gateway.audit.store import AuditStore, Filters
from pydicom.uid import generate_uid

from tests.conftest import ArchiveLog, ExtraGateway, ca_context, gateway_process
from tests.dicom_parts import CT_IMAGE, multipart, new_instance, part10

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

MFA = "urn:zt:acr:mfa"
RS = "user/ImagingStudy.rs"
READ = f"openid {RS}"
STORE = "system/ImagingStudy.c"


@dataclass
class Deployment:
    cluster: Any
    gateway_url: str
    audit_url: str
    replicas: list[ExtraGateway]
    stack: dict[str, Any]
    spills: list[Path]
    overrides: list[dict[str, Any]] = field(default_factory=list)
    exits: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def settings(self, n: int, tmp: Path) -> dict[str, Any]:
        return {
            "workers": 1,
            "database_url": self.gateway_url,
            "database_pool": {"size": 4, "max_overflow": 4, "timeout_seconds": 3},
            "audit": {"database_url": self.audit_url, "spill_dir": str(self.spills[n])},
            "policy": {"change_feed_interval_seconds": 1},
        }

    def restart(self, n: int) -> ExtraGateway:
        """A new process for replica n (after a kill), with the same settings."""
        gw = self.exits.enter_context(gateway_process(self.stack, self.overrides[n]))
        self.replicas[n] = gw
        return gw


@pytest.fixture(scope="module")
def deployment(stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from ztstack.postgres import Cluster

    tmp = tmp_path_factory.mktemp("replicas")
    cluster = Cluster.create()  # the server's defaults: fsync on, as in production
    try:
        cluster.start()
        d = Deployment(
            cluster,
            cluster.create_database("gateway"),
            cluster.create_database("audit"),
            [],
            stack,
            [tmp / "spill-a", tmp / "spill-b"],
        )
        with d.exits:
            for n in range(2):
                d.overrides.append(d.settings(n, tmp))
                d.replicas.append(d.exits.enter_context(gateway_process(stack, d.overrides[n])))
            yield d
    finally:
        cluster.remove()


@pytest.fixture(scope="module")
def client(stack: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(verify=ca_context(stack), timeout=30.0) as c:
        yield c


def bearer(token_set: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_set.access_token}"}


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s: {what}")
        time.sleep(interval)


# Studies stored here are dated before the demo data, so that in newest-first lists (the
# viewer's worklist, 101 per page) they never push the demo studies off the first page.
PAST = "20200101"


def dated(ds: Any) -> Any:
    ds.StudyDate = PAST
    return ds


def stow(client: httpx.Client, url: str, token: Any, study: str, patient: str) -> httpx.Response:
    ds = dated(new_instance(study, patient, rows=4, sop_class=CT_IMAGE, modality="CT"))
    ctype, body = multipart([part10(ds)])
    headers = bearer(token) | {"Content-Type": ctype, "Accept": "application/dicom+json"}
    return client.post(f"{url}/dicom-web/studies", headers=headers, content=body)


def audit_verify(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomweb_gateway.audit", "verify", "--database-url", url],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def archive_has(stack: dict[str, Any], study: str) -> bool:
    a = stack["archive"]
    ctx = ca_context(stack, (a["gateway_client_cert"], a["gateway_client_key"]))
    password = Path(a["password_file"]).read_text(encoding="utf-8").strip()
    r = httpx.post(
        f"{a['http_url']}/tools/lookup",
        content=study.encode(),
        auth=(a["username"], password),
        verify=ctx,
        timeout=30,
    )
    r.raise_for_status()
    return any(hit.get("Type") == "Study" for hit in r.json())


def demo(key: str) -> str:
    from ztstack.demo_data import study

    return study(key).study_instance_uid


def index_ready(client: httpx.Client, d: Deployment, admin: Any) -> None:
    """The replicas' fresh database learns the archive's studies from the change feed."""
    uid = demo("p004-ct-head")

    def known() -> bool:
        r = client.get(f"{d.replicas[0].url}/admin/studies/{uid}", headers=bearer(admin))
        return r.status_code == 200 and bool(r.json().get("labels"))

    wait_for(known, 90, "the demo studies are labelled in the shared store")


# ------------------------------------------------------------------------------ the two replicas


@pytest.mark.control("AO-3")
@pytest.mark.control("ID-5")
def test_dpop_proof_replayed_on_the_other_replica_is_refused(
    deployment: Deployment, client: httpx.Client, tokens: Any
) -> None:
    a, b = deployment.replicas
    key = generate_key()
    token_set = tokens.user_dpop("radiologist", READ, key)
    url = f"{deployment.stack['resource']}/dicom-web/studies"
    proof = make_proof(key, "GET", url, token_set.access_token)
    headers = {"Authorization": f"DPoP {token_set.access_token}", "DPoP": proof}
    first = client.get(f"{a.url}/dicom-web/studies", headers=headers)
    assert first.status_code == 200, first.text
    replayed = client.get(f"{b.url}/dicom-web/studies", headers=headers)
    assert replayed.status_code == 401
    assert 'error="invalid_dpop_proof"' in replayed.headers["www-authenticate"]
    fresh = make_proof(key, "GET", url, token_set.access_token)
    ok = client.get(f"{b.url}/dicom-web/studies", headers=headers | {"DPoP": fresh})
    assert ok.status_code == 200


@pytest.mark.control("AO-3")
def test_label_change_and_break_glass_apply_on_the_other_replica_at_once(
    deployment: Deployment, client: httpx.Client, tokens: Any
) -> None:
    a, b = deployment.replicas
    admin = tokens.user("admin", "openid", acr_values=MFA, max_age=300)
    index_ready(client, deployment, admin)
    uid = demo("p003-mr-brain")
    researcher = tokens.user("researcher", READ)
    metadata = f"/dicom-web/studies/{uid}/metadata"
    # Warm both replicas' caches with the denial first.
    for gw in (a, b):
        assert client.get(gw.url + metadata, headers=bearer(researcher)).status_code == 403
    json_headers = bearer(admin) | {"Content-Type": "application/json"}
    label = {"add": ["research:trial-42"], "reason": "AO-3 e2e"}
    added = client.patch(f"{a.url}/admin/studies/{uid}/labels", headers=json_headers, json=label)
    assert added.status_code == 200, added.text
    assert client.get(b.url + metadata, headers=bearer(researcher)).status_code == 200
    removal = {"remove": ["research:trial-42"], "reason": "AO-3 e2e clean-up"}
    removed = client.patch(
        f"{b.url}/admin/studies/{uid}/labels", headers=json_headers, json=removal
    )
    assert removed.status_code == 200
    assert client.get(a.url + metadata, headers=bearer(researcher)).status_code == 403

    vip = demo("p004-ct-head")
    er = tokens.user("er-physician", READ, acr_values=MFA, max_age=300)
    vip_metadata = f"/dicom-web/studies/{vip}/metadata"
    assert client.get(b.url + vip_metadata, headers=bearer(er)).status_code == 403
    grant = client.post(
        f"{a.url}/admin/break-glass",
        headers=bearer(er) | {"Content-Type": "application/json"},
        json={"study_instance_uid": vip, "reason": "unconscious patient, ER (AO-3 e2e)"},
    )
    assert grant.status_code == 201, grant.text
    assert client.get(b.url + vip_metadata, headers=bearer(er)).status_code == 200


@pytest.mark.control("AO-3")
@pytest.mark.control("VA-6")
def test_audit_chain_verifies_after_interleaved_traffic(
    deployment: Deployment, client: httpx.Client, tokens: Any
) -> None:
    clinician = tokens.user("north-clinician", READ, acr_values=MFA)
    modality = tokens.device("modality-ct1", STORE)
    urls = [gw.url for gw in deployment.replicas]
    uid = demo("p001-ct-chest")

    def one(n: int) -> str:
        url = urls[n % 2]
        if n % 5 == 0:
            r = stow(client, url, modality, generate_uid(), "ZT-P001")
        elif n % 2:
            r = client.get(f"{url}/dicom-web/studies?limit=5", headers=bearer(clinician))
        else:
            r = client.get(f"{url}/dicom-web/studies/{uid}/metadata", headers=bearer(clinician))
        assert r.status_code in (200, 403), r.text
        return r.headers["x-request-id"]

    with ThreadPoolExecutor(8) as pool:
        request_ids = list(pool.map(one, range(80)))
    done = audit_verify(deployment.audit_url)
    assert done.returncode == 0, done.stdout + done.stderr
    store = AuditStore(deployment.audit_url)
    try:
        for rid in request_ids:
            assert store.search(Filters(request_id=rid)), f"no audit record for {rid}"
    finally:
        store.dispose()


def _rounds(client: httpx.Client, gw: ExtraGateway) -> float:
    text = client.get(f"{gw.url}/metrics").text
    match = re.search(r"^gateway_index_rounds_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.control("AO-3")
def test_change_feed_poller_runs_once_per_deployment(
    deployment: Deployment, client: httpx.Client
) -> None:
    a, b = deployment.replicas
    before = [_rounds(client, gw) for gw in (a, b)]
    time.sleep(4)  # four change-feed intervals
    after = [_rounds(client, gw) for gw in (a, b)]
    grew = [y > x for x, y in zip(before, after, strict=True)]
    assert grew.count(True) == 1, (before, after)


# ------------------------------------------------------------------------------ faults


@dataclass
class Load:
    """Mixed traffic from threads until stopped: STOW of new studies and reads, both replicas."""

    client: httpx.Client
    urls: list[str]
    modality: Any
    clinician: Any
    statuses: list[tuple[float, int]] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)  # study UIDs sent by STOW
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, worker: int) -> None:
        n = worker
        while not self.stop.is_set():
            url = self.urls[n % 2]
            try:
                if n % 2:
                    uid = generate_uid()
                    self.stored.append(uid)
                    r = stow(self.client, url, self.modality, uid, "ZT-P001")
                else:
                    r = self.client.get(
                        f"{url}/dicom-web/studies?limit=3", headers=bearer(self.clinician)
                    )
                self.statuses.append((time.monotonic(), r.status_code))
            except httpx.HTTPError:
                self.statuses.append((time.monotonic(), -1))
            n += 2
            time.sleep(0.05)


@contextlib.contextmanager
def load(d: Deployment, client: httpx.Client, tokens: Any, workers: int = 4) -> Iterator[Load]:
    traffic = Load(
        client,
        [gw.url for gw in d.replicas],
        tokens.device("modality-ct1", STORE),
        tokens.user("north-clinician", READ, acr_values=MFA),
    )
    threads = [threading.Thread(target=traffic.run, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    try:
        yield traffic
    finally:
        traffic.stop.set()
        for t in threads:
            t.join(60)


def _nothing_unaudited(d: Deployment, uids: list[str]) -> None:
    """Every study that reached the archive has its STOW in the audit chain."""
    store = AuditStore(d.audit_url)
    try:
        for uid in uids:
            if archive_has(d.stack, uid):
                assert store.search(Filters(study=uid)), f"{uid} in the archive, not audited"
    finally:
        store.dispose()


@pytest.mark.control("AO-2")
@pytest.mark.control("AO-3")
def test_database_stopped_mid_load_fails_closed_and_recovers(
    deployment: Deployment, client: httpx.Client, tokens: Any
) -> None:
    d = deployment
    with load(d, client, tokens) as traffic:
        time.sleep(3)
        stopped_at = time.monotonic()
        d.cluster.stop("fast")
        time.sleep(5)
        down = [s for t, s in traffic.statuses if t > stopped_at + 1]
        d.cluster.start()
        restarted_at = time.monotonic()

        def recovered() -> bool:
            recent = [s for t, s in traffic.statuses if t > time.monotonic() - 1.5]
            return bool(recent) and all(s == 200 for s in recent)

        wait_for(recovered, 60, "both replicas answer 200 again")
        recovery = time.monotonic() - restarted_at
    assert down, "no request was answered while the database was down"
    assert set(down) == {503}, sorted(set(down))  # fail closed: 503, never 500 or 200
    print(f"database down: {len(down)} answers, all 503; recovered in {recovery:.1f} s")
    # The spilled records (requests forwarded just before the stop) are in the chain now.
    wait_for(
        lambda: not any(f for p in d.spills for f in p.glob("spill-*.jsonl")),
        30,
        "spills drained",
    )
    _nothing_unaudited(d, list(traffic.stored))
    done = audit_verify(d.audit_url)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.control("AO-3")
def test_replica_killed_mid_stow_leaves_no_partial_state(
    deployment: Deployment, client: httpx.Client, tokens: Any
) -> None:
    d = deployment
    modality = tokens.device("modality-ct1", STORE)
    log = ArchiveLog(Path(d.stack["archive"]["request_log"]))
    outcome: list[Any] = []
    for _attempt in range(3):
        a, b = d.replicas
        study = generate_uid()
        instances = [
            part10(dated(new_instance(study, "ZT-P001", rows=256, sop_class=CT_IMAGE)))
            for _ in range(80)
        ]
        ctype, body = multipart(instances)
        headers = bearer(modality) | {"Content-Type": ctype, "Accept": "application/dicom+json"}
        outcome = []

        def send(
            url: str = a.url,
            content: bytes = body,
            h: dict[str, str] = headers,
            out: list[Any] = outcome,
        ) -> None:
            try:
                out.append(client.post(f"{url}/dicom-web/studies", headers=h, content=content))
            except httpx.HTTPError as exc:
                out.append(exc)

        mark = log.mark()
        sender = threading.Thread(target=send)
        sender.start()
        # Killed in the middle: once the archive has received the STOW (polled fast: the
        # rest of the request takes well under a second).
        wait_for(
            lambda m=mark: any(e.method == "POST" for e in log.since(m, everything=True)),
            60,
            "the replica starts forwarding the STOW",
            interval=0.002,
        )
        os.kill(a.pid, signal.SIGKILL)
        sender.join(60)
        if outcome and isinstance(outcome[0], httpx.HTTPError):
            break
        d.restart(0)  # the kill came after the answer: try again with a new study
    assert outcome and isinstance(outcome[0], httpx.HTTPError), outcome
    # The chain has no half-written record, the head matches the last record.
    done = audit_verify(d.audit_url)
    assert done.returncode == 0, done.stdout + done.stderr
    # No half-recorded claims: the same store, retried through the other replica, succeeds.
    retried: list[httpx.Response] = []

    def stored_through_b() -> bool:
        retried.append(client.post(f"{b.url}/dicom-web/studies", headers=headers, content=body))
        return retried[-1].status_code == 200

    wait_for(stored_through_b, 60, "the interrupted store, retried on the other replica")
    assert {r.status_code for r in retried} <= {200, 503}
    store = AuditStore(d.audit_url)
    try:
        assert store.search(Filters(study=study))
    finally:
        store.dispose()
    d.restart(0)
    assert audit_verify(d.audit_url).returncode == 0


@pytest.mark.control("AO-2")
def test_audit_store_disk_full_fails_closed_with_a_clear_log_line(
    deployment: Deployment, client: httpx.Client, tokens: Any, tmp_path: Path
) -> None:
    """The audit database lives on a 24 MB disk (tmpfs tablespace) that fills up."""
    import pwd

    d = deployment
    disk = d.cluster.root / "small-disk"  # where the server's user may go
    disk.mkdir()
    owner = pwd.getpwnam(d.cluster.user) if d.cluster.user else None
    uid_gid = f",uid={owner.pw_uid},gid={owner.pw_gid}" if owner else ""
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=24m,mode=0700{uid_gid}", "tmpfs", str(disk)],
        check=True,
    )
    filler = disk / "filler"
    try:
        (disk / "ts").mkdir()
        if owner:
            os.chown(disk / "ts", owner.pw_uid, owner.pw_gid)
        d.cluster.psql(f"CREATE TABLESPACE small LOCATION '{disk / 'ts'}'")
        d.cluster.psql("CREATE DATABASE audit_full TABLESPACE small")
        url = d.cluster.url("audit_full")
        # Leave about 200 kB free.
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        with filler.open("wb") as f:
            f.write(b"\0" * max(0, free - 200_000))
        clinician = tokens.user("north-clinician", READ, acr_values=MFA)
        spill = tmp_path / "spill"
        overrides = d.settings(0, tmp_path) | {
            "audit": {"database_url": url, "spill_dir": str(spill)}
        }
        with gateway_process(d.stack, overrides) as gw:
            statuses = []
            for _ in range(400):
                r = client.get(f"{gw.url}/dicom-web/studies?limit=1", headers=bearer(clinician))
                statuses.append(r.status_code)
                if r.status_code == 503:
                    break
            assert statuses[-1] == 503, statuses[-5:]
            assert set(statuses[:-1]) <= {200}
            assert client.get(f"{gw.url}/readyz").status_code == 503
            log = gw.log.read_text(encoding="utf-8", errors="replace")
            assert "audit store full (no space left on its disk)" in log
            # Space comes back: the waiting record is chained, requests flow again.
            filler.unlink()
            wait_for(
                lambda: (
                    client.get(
                        f"{gw.url}/dicom-web/studies?limit=1", headers=bearer(clinician)
                    ).status_code
                    == 200
                ),
                60,
                "the gateway recovers once space is freed",
            )
        done = audit_verify(url)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        with contextlib.suppress(Exception):
            d.cluster.psql("DROP DATABASE IF EXISTS audit_full")
            d.cluster.psql("DROP TABLESPACE IF EXISTS small")
        subprocess.run(["umount", str(disk)], check=False)
        disk.rmdir()
