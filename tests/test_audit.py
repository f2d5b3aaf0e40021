"""Audit trail end to end (VA-1..4, VA-6, AO-2 audit store down) against the running stack.

Each request is matched to its audit records by the `x-request-id` the gateway returns; the
store is the gateway's own SQLite file, read here as an auditor's tool would read it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dicomweb_gateway.audit.schema import validate
from dicomweb_gateway.audit.store import AuditStore, Filters
from pydicom.uid import generate_uid

from tests.dicom_parts import CT_IMAGE, PE_PREAMBLE, multipart, new_instance, part10

pytestmark = pytest.mark.e2e

MFA = "urn:zt:acr:mfa"
READ = "openid user/ImagingStudy.rs"


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audit_url(stack: dict[str, Any]) -> str:
    settings = yaml.safe_load(
        (Path(stack["run_dir"]) / "gateway" / "settings.yaml").read_text(encoding="utf-8")
    )
    return str(settings["audit"]["database_url"])


@pytest.fixture(scope="module")
def audit(audit_url: str) -> Any:
    store = AuditStore(audit_url)
    yield store
    store.dispose()


def records(audit: AuditStore, response: httpx.Response) -> list[dict[str, Any]]:
    request_id = response.headers["x-request-id"]
    return audit.search(Filters(request_id=request_id))


def events(rows: list[dict[str, Any]]) -> list[tuple[str, str, int, str]]:
    return [(r["event_id"], r["event_action"], r["outcome"], r["event_types"]) for r in rows]


def xml(row: dict[str, Any]) -> ET.Element:
    assert validate(row["message"]) == []  # PS3.15 A.5.1 structure
    return ET.fromstring(row["message"])  # noqa: S314 - the gateway's own output


def requestor(message: ET.Element) -> dict[str, str]:
    users = [p for p in message.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
    assert len(users) == 1
    return dict(users[0].attrib)


def participant_ids(message: ET.Element) -> list[str]:
    return [p.get("UserID", "") for p in message.findall("ActiveParticipant")]


def objects(message: ET.Element, id_type: str) -> list[str]:
    """ParticipantObjectIDs whose ID type code is `id_type` (2 patient, 110180 study, ...)."""
    found = []
    for obj in message.findall("ParticipantObjectIdentification"):
        code = obj.find("ParticipantObjectIDTypeCode")
        if code is not None and code.get("csd-code") == id_type:
            found.append(obj.get("ParticipantObjectID", ""))
    return found


def assert_user(message: ET.Element, token: Any, stack: dict[str, Any]) -> None:
    """UserID = sub, UserName = aud<sub@iss>, client id, client address, token jti."""
    claims = token.claims
    user = requestor(message)
    assert user["UserID"] == claims["sub"]
    assert user["UserName"] == f"{stack['resource']}<{claims['sub']}@{claims['iss']}>"
    assert user["AlternativeUserID"] == claims["client_id"]
    assert user["NetworkAccessPointID"] in ("127.0.0.1", "::1")
    assert objects(message, "jti") == [claims["jti"]]
    event_time = message.find("EventIdentification").get("EventDateTime", "")  # type: ignore[union-attr]
    assert event_time.endswith("Z")  # UTC with zone


def bearer(token: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.access_token}"}


def ct_file(study: str, patient_id: str, preamble: bytes | None = None) -> bytes:
    ds = new_instance(study, patient_id, rows=4, sop_class=CT_IMAGE, modality="CT")
    return part10(ds, preamble)


def stow_body(part: bytes) -> tuple[dict[str, str], bytes]:
    ctype, body = multipart([part])
    return {"Content-Type": ctype, "Accept": "application/dicom+json"}, body


@pytest.fixture(scope="module")
def clinician(tokens: Any) -> Any:
    return tokens.user("north-clinician", READ, acr_values=MFA)


@pytest.fixture(scope="module")
def north_study() -> tuple[str, str]:
    """(StudyInstanceUID, PatientID) of a seeded study the north clinician may read."""
    from ztstack.demo_data import study

    return study("p001-ct-chest").study_instance_uid, "ZT-P001"


@pytest.fixture(scope="module")
def south_study() -> str:
    from ztstack.demo_data import study

    return study("p002-ct-abdomen").study_instance_uid


# --- VA-1, VA-2, VA-3: one transaction message each ------------------------------------------


@pytest.mark.control("VA-1")
def test_qido_yields_one_query_message(
    stack: dict[str, Any], https: httpx.Client, audit: AuditStore, clinician: Any
) -> None:
    r = https.get(
        f"{stack['dicomweb_url']}/studies?PatientID=ZT-P001&limit=5", headers=bearer(clinician)
    )
    assert r.status_code == 200
    rows = records(audit, r)
    assert events(rows) == [("110112", "E", 0, "")]
    message = xml(rows[0])
    assert_user(message, clinician, stack)
    query = message.find("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert query is not None and query.text
    assert base64.b64decode(query.text).decode() == "/dicom-web/studies?PatientID=ZT-P001&limit=5"
    assert "zt-gateway" in participant_ids(message)
    assert stack["archive"]["http_url"].rstrip("/") in participant_ids(message)


@pytest.mark.control("VA-2")
@pytest.mark.parametrize("suffix", ["", "/metadata"])
def test_wado_yields_one_transfer_message(
    stack: dict[str, Any],
    https: httpx.Client,
    audit: AuditStore,
    clinician: Any,
    north_study: tuple[str, str],
    suffix: str,
) -> None:
    study, patient = north_study
    accept = "application/dicom+json" if suffix else 'multipart/related; type="application/dicom"'
    r = https.get(
        f"{stack['dicomweb_url']}/studies/{study}{suffix}",
        headers=bearer(clinician) | {"Accept": accept},
    )
    assert r.status_code == 200
    rows = records(audit, r)
    assert events(rows) == [("110104", "R", 0, "")]
    message = xml(rows[0])
    assert_user(message, clinician, stack)
    assert objects(message, "110180") == [study]
    assert objects(message, "2") == [patient]


@pytest.mark.control("VA-3")
def test_stow_and_delete_yield_110104_c_and_110105(
    stack: dict[str, Any], https: httpx.Client, audit: AuditStore, tokens: Any
) -> None:
    modality = tokens.device("modality-ct1", "system/ImagingStudy.c")
    study = generate_uid()
    headers, body = stow_body(ct_file(study, "ZT-P901"))
    r = https.post(
        f"{stack['dicomweb_url']}/studies", headers=bearer(modality) | headers, content=body
    )
    assert r.status_code == 200, r.text
    rows = records(audit, r)
    assert events(rows) == [("110104", "C", 0, "")]
    message = xml(rows[0])
    assert requestor(message)["UserID"] == modality.claims["sub"]
    assert objects(message, "110180") == [study]
    assert objects(message, "2") == ["ZT-P901"]

    radiologist = tokens.user(
        "radiologist", "openid user/ImagingStudy.rs user/ImagingStudy.d", acr_values=MFA, max_age=0
    )
    r = https.delete(f"{stack['dicomweb_url']}/studies/{study}", headers=bearer(radiologist))
    assert r.status_code in (200, 204), r.text
    rows = records(audit, r)
    assert events(rows) == [("110105", "D", 0, "")]
    message = xml(rows[0])
    assert_user(message, radiologist, stack)
    assert objects(message, "110180") == [study]


# --- VA-4: every kind of denial is one Security Alert, and the archive saw nothing ------------


def _alert(stack: dict[str, Any], rows: list[dict[str, Any]], type_code: str) -> ET.Element:
    assert events(rows) == [("110113", "E", 4, type_code)]
    message = xml(rows[0])
    # A refused request never reached the archive: it is no participant.
    assert stack["archive"]["http_url"].rstrip("/") not in participant_ids(message)
    return message


@pytest.mark.control("VA-4")
@pytest.mark.parametrize("credential", ["none", "forged", "dpop-as-bearer", "dpop-without-proof"])
def test_authentication_failures_are_security_alerts(
    stack: dict[str, Any],
    https: httpx.Client,
    audit: AuditStore,
    archive_log: Any,
    tokens: Any,
    north_study: tuple[str, str],
    credential: str,
) -> None:
    headers: dict[str, str] = {}
    if credential == "forged":
        real = tokens.user("north-clinician", READ, acr_values=MFA).access_token
        head, payload, _ = real.split(".")
        headers = {"Authorization": f"Bearer {head}.{payload}.{'A' * 86}"}
    elif credential.startswith("dpop"):
        from dicomweb_cli import generate_key

        bound = tokens.user_dpop("north-clinician", READ, generate_key())
        scheme = "Bearer" if credential == "dpop-as-bearer" else "DPoP"
        headers = {"Authorization": f"{scheme} {bound.access_token}"}
    mark = archive_log.mark()
    r = https.get(f"{stack['dicomweb_url']}/studies/{north_study[0]}/metadata", headers=headers)
    assert r.status_code == 401
    message = _alert(stack, records(audit, r), "110126")
    description = message.findtext("EventIdentification/EventOutcomeDescription") or ""
    if credential == "dpop-without-proof":
        assert "dpop" in description
    assert archive_log.since(mark) == []


@pytest.mark.control("VA-4")
def test_policy_denial_is_a_security_alert(
    stack: dict[str, Any],
    https: httpx.Client,
    audit: AuditStore,
    archive_log: Any,
    clinician: Any,
    south_study: str,
) -> None:
    mark = archive_log.mark()
    r = https.get(
        f"{stack['dicomweb_url']}/studies/{south_study}/metadata", headers=bearer(clinician)
    )
    assert r.status_code in (403, 404)
    message = _alert(stack, records(audit, r), "110132")
    assert_user(message, clinician, stack)
    assert objects(message, "110180") == [south_study]
    # Only the owner lookup, never the study's data.
    assert all("/metadata" not in e.uri for e in archive_log.since(mark))


@pytest.mark.control("VA-4")
def test_preamble_rejection_is_a_security_alert(
    stack: dict[str, Any], https: httpx.Client, audit: AuditStore, archive_log: Any, tokens: Any
) -> None:
    modality = tokens.device("modality-ct1", "system/ImagingStudy.c")
    study = generate_uid()
    headers, body = stow_body(ct_file(study, "ZT-P902", preamble=PE_PREAMBLE))
    mark = archive_log.mark()
    r = https.post(
        f"{stack['dicomweb_url']}/studies", headers=bearer(modality) | headers, content=body
    )
    assert r.status_code in (400, 409)
    rows = records(audit, r)
    assert [e[:2] for e in events(rows)] == [("110113", "E"), ("110104", "C")]
    assert events(rows)[0] == ("110113", "E", 4, "110132")
    description = xml(rows[0]).findtext("EventIdentification/EventOutcomeDescription") or ""
    assert "preamble" in description
    assert all(e.method != "POST" for e in archive_log.since(mark))


@pytest.mark.control("VA-4")
def test_audit_log_access_needs_the_auditor_role_with_mfa(
    stack: dict[str, Any], https: httpx.Client, audit: AuditStore, tokens: Any, clinician: Any
) -> None:
    url = f"{stack['gateway_url']}/audit?limit=5"
    r = https.get(url, headers=bearer(clinician))
    assert r.status_code == 403
    assert events(records(audit, r)) == [("110113", "E", 4, "110132")]
    password_only = tokens.user("auditor", "openid")
    if password_only.claims.get("acr") != MFA:
        r = https.get(url, headers=bearer(password_only))
        assert r.status_code == 401
        assert 'acr_values="urn:zt:acr:mfa' in r.headers["www-authenticate"]
        assert events(records(audit, r)) == [("110113", "E", 4, "110132")]
    auditor = tokens.user("auditor", "openid", acr_values=MFA)
    r = https.get(f"{url}&user={clinician.claims['sub']}", headers=bearer(auditor))
    assert r.status_code == 200
    assert all(rec["user"] == clinician.claims["sub"] for rec in r.json()["records"])
    rows = records(audit, r)
    assert events(rows) == [("110101", "R", 0, "")]
    assert_user(xml(rows[0]), auditor, stack)


@pytest.mark.control("VA-4")
def test_break_glass_is_an_emergency_override(
    stack: dict[str, Any], https: httpx.Client, audit: AuditStore, tokens: Any
) -> None:
    from ztstack.demo_data import study as demo_study

    er = tokens.user("er-physician", READ, acr_values=MFA, max_age=0)
    # The VIP study's UID as the ER would read it off an order.
    study = demo_study("p004-ct-head").study_instance_uid
    r = https.post(
        f"{stack['gateway_url']}/admin/break-glass",
        headers=bearer(er),
        json={"study_instance_uid": study, "reason": "trauma bay 2, unconscious patient"},
    )
    assert r.status_code == 201, r.text
    rows = records(audit, r)
    assert events(rows) == [("110113", "E", 0, "110127")]
    message = xml(rows[0])
    assert_user(message, er, stack)
    assert objects(message, "110180") == [study]
    assert objects(message, "2") == ["ZT-P004"]
    assert "trauma bay 2" in (message.findtext("EventIdentification/EventOutcomeDescription") or "")


# --- VA-6: hash chain; tampering is named -----------------------------------------------------


def _verify(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomweb_gateway.audit", "verify", "--database-url", url],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _copy(audit_url: str, target: Path) -> str:
    """A consistent copy of the live store (SQLite online backup, WAL included)."""
    source = sqlite3.connect(audit_url.removeprefix("sqlite:///"))
    copy = sqlite3.connect(target)
    source.backup(copy)
    source.close()
    copy.close()
    return f"sqlite:///{target}"


def _tamper(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER IF EXISTS audit_record_no_update")
    conn.execute("DROP TRIGGER IF EXISTS audit_record_no_delete")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


@pytest.mark.control("VA-6")
def test_live_chain_verifies_and_tampering_is_named(
    stack: dict[str, Any], https: httpx.Client, audit_url: str, clinician: Any, tmp_path: Path
) -> None:
    for _ in range(4):  # make sure there are records to tamper with
        assert https.get(f"{stack['dicomweb_url']}/studies", headers=bearer(clinician)).is_success
    done = _verify(audit_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK ")
    base = tmp_path / "base.db"
    _copy(audit_url, base)
    n = sqlite3.connect(base).execute("SELECT max(seq) FROM audit_record").fetchone()[0]
    assert n >= 4
    cases = {
        "altered": (
            ["UPDATE audit_record SET user_id = 'mallory' WHERE seq = 2"],
            "record 2 altered",
        ),
        "deleted": (["DELETE FROM audit_record WHERE seq = 3"], "record 3 deleted"),
        "reordered": (
            [
                "UPDATE audit_record SET seq = -1 WHERE seq = 2",
                "UPDATE audit_record SET seq = 2 WHERE seq = 3",
                "UPDATE audit_record SET seq = 3 WHERE seq = -1",
            ],
            "record 2 reordered",
        ),
        "tail deleted": ([f"DELETE FROM audit_record WHERE seq = {n}"], f"record {n} deleted"),  # noqa: S608
    }
    for name, (statements, named) in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.db"
        shutil.copy(base, path)
        _tamper(path, *statements)
        done = _verify(f"sqlite:///{path}")
        assert done.returncode == 1, name
        assert f"FAIL {named}" in done.stdout, (name, done.stdout)


# --- VA-5: syslog over TLS to an audit repository, nothing lost across its restart ----------


class SyslogReceiver:
    """A tiny RFC 5425 audit repository on loopback (TLS with the gateway's certificate)."""

    def __init__(self, stack: dict[str, Any], port: int) -> None:
        pki = Path(stack["run_dir"]) / "pki"
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(pki / "gateway.pem", pki / "gateway.key")
        self.port = port
        self.messages: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._clients: list[asyncio.StreamWriter] = []

    def start(self) -> None:
        async def go() -> None:
            self._server = await asyncio.start_server(
                self._client, "127.0.0.1", self.port, ssl=self.context
            )

        asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)

    def stop(self) -> None:
        async def go() -> None:
            assert self._server is not None
            self._server.close()
            for writer in self._clients:
                writer.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)

    def shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            while True:
                length = await reader.readuntil(b" ")
                self.messages.append(await reader.readexactly(int(length[:-1])))
        writer.close()

    def wait_for(self, needle: bytes, seconds: float = 90) -> bytes:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in list(self.messages):
                if needle in message:
                    return message
            time.sleep(0.2)
        raise AssertionError(f"not delivered within {seconds} s; got {len(self.messages)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.control("VA-5")
def test_syslog_delivery_survives_repository_outage_and_restart(
    stack: dict[str, Any], https: httpx.Client, extra_gateway: Any, clinician: Any, tmp_path: Path
) -> None:
    port = _free_port()
    receiver = SyslogReceiver(stack, port)
    syslog = {
        "host": "localhost",
        "port": port,
        "ca_cert": stack["ca_cert"],
        "spool_dir": str(tmp_path / "spool"),
    }

    def query(tag: str) -> bytes:
        r = https.get(f"{gw.url}/dicom-web/studies?PatientID={tag}", headers=bearer(clinician))
        assert r.status_code == 200
        url = f"/dicom-web/studies?PatientID={tag}".encode()
        return base64.b64encode(url)  # how the Query message carries it

    try:
        with extra_gateway({"audit": {"syslog": syslog}}) as gw:
            # The repository is down: the message waits in the spool.
            first = query("VA5-DOWN")
            time.sleep(1)
            assert list((tmp_path / "spool").glob("*.msg*"))
            receiver.start()
            message = receiver.wait_for(first)
            assert re.match(
                rb"^<85>1 \S+Z \S+ zt-gateway \d+ IHE\+RFC-3881 - <AuditMessage>", message
            )
            assert validate(message.split(b" - ", 1)[1].decode()) == []
            # The repository restarts: what is sent meanwhile arrives after it is back.
            receiver.stop()
            second = query("VA5-RESTART")
            receiver.start()
            receiver.wait_for(second)
            assert not list((tmp_path / "spool").glob("*.msg*"))
    finally:
        with contextlib.suppress(Exception):
            receiver.stop()
        receiver.shutdown()


# --- AO-2: audit store down -> 503 and nothing reaches the archive ----------------------------


@pytest.mark.control("AO-2")
def test_unwritable_audit_store_fails_closed(
    stack: dict[str, Any],
    https: httpx.Client,
    archive_log: Any,
    extra_gateway: Any,
    clinician: Any,
    tokens: Any,
    tmp_path: Path,
) -> None:
    unwritable = f"sqlite:///{tmp_path}/no-such-directory/audit.db"
    modality = tokens.device("modality-ct1", "system/ImagingStudy.c")
    with extra_gateway({"audit": {"database_url": unwritable}}) as gw:
        mark = archive_log.mark()
        r = https.get(f"{gw.url}/dicom-web/studies", headers=bearer(clinician))
        assert r.status_code == 503 and "retry-after" in r.headers
        headers, body = stow_body(ct_file(generate_uid(), "ZT-P903"))
        r = https.post(
            f"{gw.url}/dicom-web/studies", headers=bearer(modality) | headers, content=body
        )
        assert r.status_code == 503
        ready = https.get(f"{gw.url}/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["audit"] == "unavailable"
        seen = [e for e in archive_log.since(mark) if e.uri not in ("/system", "/changes")]
        assert seen == []
