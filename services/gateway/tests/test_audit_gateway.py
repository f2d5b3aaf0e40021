"""The real Auditor inside the real gateway pipeline (fake archive and IdP, no network):
every transaction and every denial leaves exactly one message of the right type."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_gateway.app import create_app
from dicomweb_gateway.audit import Auditor
from dicomweb_gateway.audit.schema import validate
from dicomweb_gateway.audit.store import AuditStore, Filters
from dicomweb_gateway.authorize import Authorizer
from dicomweb_gateway.context import Action, RequestContext
from dicomweb_gateway.errors import insufficient_scope
from dicomweb_gateway.policy import decide, load_policy
from gateway_fakes import (
    PE_PREAMBLE,
    PUBLIC_URL,
    FakeArchive,
    FakeIdp,
    IndexDouble,
    MemoryIdentities,
    dicom_file,
    make_settings,
)
from joserfc.jwk import ECKey
from policy_helpers import DEMO_POLICY

A, B = "1.2.826.0.1.1", "1.2.826.0.1.2"
A_SERIES, B_SERIES = "1.2.826.0.1.1.1", "1.2.826.0.1.2.1"


class OnlyStudyA(IndexDouble):
    """Authorizer double: study A only (the real policy has its own tests)."""

    indexed = (A, B)

    async def check_action(self, ctx: RequestContext, action: Action) -> None:
        if action is Action.AUDIT_READ:  # the demo policy's audit-read rule decides it
            policy = load_policy(DEMO_POLICY)
            Authorizer._enforce(ctx, decide(ctx.principal, action, None, policy, time.time()))

    async def check_study(self, ctx: RequestContext, action: Action, uid: str) -> None:
        if uid != A:
            raise insufficient_scope("study not permitted")

    async def permitted_studies(self, ctx: RequestContext, action: Action, uids: Any) -> set[str]:
        return {u for u in uids if u == A}

    def __init__(self) -> None:
        self.store = MemoryIdentities()

    async def on_stored(
        self, ctx: RequestContext, uids: Any, parts: Any = (), claims: Any = ()
    ) -> None:
        return None


@pytest.fixture
def archive() -> FakeArchive:
    fake = FakeArchive()
    fake.add(A, A_SERIES, A_SERIES + ".1", "ZT-P001")
    fake.add(B, B_SERIES, B_SERIES + ".1", "ZT-P002")
    return fake


@pytest.fixture
def idp() -> FakeIdp:
    return FakeIdp()


async def _client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.9", 5555))
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as c:
            yield c


@pytest.fixture
async def gateway(
    tmp_path: Path, archive: FakeArchive, idp: FakeIdp
) -> AsyncIterator[tuple[httpx.AsyncClient, AuditStore]]:
    url = f"sqlite:///{tmp_path}/audit.db"
    settings = make_settings(tmp_path, audit={"database_url": url, "source_id": "zt-gateway"})
    app = create_app(
        settings, archive_transport=archive.transport(), idp_transport=idp.transport(),
        authorizer=OnlyStudyA(),
    )  # fmt: skip
    assert isinstance(app.state.services.auditor, Auditor)  # built by the factory from the settings
    store = AuditStore(url)
    async for client in _client(app):
        yield client, store
    store.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


def stow(study: str, preamble: bytes | None = None) -> tuple[dict[str, str], bytes]:
    from gateway_fakes import multipart

    part = dicom_file(study=study, preamble=preamble) if preamble else dicom_file(study=study)
    ctype, body = multipart([part])
    return {"Content-Type": ctype}, body


def study_objects(message: ET.Element) -> list[str | None]:
    """Study participant objects: type 2, role 3, ID type (110180, DCM, Study Instance UID)."""
    found = []
    for obj in message.iter("ParticipantObjectIdentification"):
        id_type = obj.find("ParticipantObjectIDTypeCode")
        assert id_type is not None
        if (obj.get("ParticipantObjectTypeCode"), obj.get("ParticipantObjectTypeCodeRole")) == (
            "2",
            "3",
        ) and id_type.get("csd-code") == "110180":
            found.append(obj.get("ParticipantObjectID"))
    return found


# (name, method, path, token kind, body kind, expected status, [(EventID, action, outcome,
#  EventTypeCodes)], expected study participant objects of the first message)
CASES = [
    ("qido", "GET", "/dicom-web/studies", "user", None, 200, [("110112", "E", 0, "")], []),
    ("wado-rs", "GET", f"/dicom-web/studies/{A}", "user", None, 200, [("110104", "R", 0, "")], [A]),
    (
        "metadata", "GET", f"/dicom-web/studies/{A}/metadata", "user", None, 200,
        [("110104", "R", 0, "")], [A],
    ),
    ("stow-rs", "POST", "/dicom-web/studies", "user", "good", 200, [("110104", "C", 0, "")], [A]),
    (
        "stow-preamble", "POST", "/dicom-web/studies", "user", "pe", 409,
        [("110113", "E", 4, "110132"), ("110104", "C", 4, "")], [A],
    ),
    ("delete-study", "DELETE", f"/dicom-web/studies/{A}", "user", None, 204,
     [("110105", "D", 0, "")], [A]),
    (
        "delete-series", "DELETE", f"/dicom-web/studies/{A}/series/{A_SERIES}", "user", None,
        204, [("110103", "D", 0, "")], [A],
    ),
    ("no-token", "GET", "/dicom-web/studies", None, None, 401, [("110113", "E", 4, "110126")], []),
    (
        "forged-token", "GET", f"/dicom-web/studies/{A}", "forged", None, 401,
        [("110113", "E", 4, "110126")], [],
    ),
    (
        "other-study", "GET", f"/dicom-web/studies/{B}", "user", None, 403,
        [("110113", "E", 4, "110132")], [B],
    ),
    ("audit-read", "GET", "/audit", "auditor", None, 200, [("110101", "R", 0, "")], []),
    (
        "audit-read-no-mfa", "GET", "/audit", "auditor-pwd", None, 401,
        [("110113", "E", 4, "110132")], [],
    ),
]  # fmt: skip


@pytest.mark.anyio
@pytest.mark.control("VA-1")
@pytest.mark.control("VA-2")
@pytest.mark.control("VA-3")
@pytest.mark.control("VA-4")
@pytest.mark.parametrize(
    ("name", "method", "path", "who", "body", "status", "expected", "studies"),
    CASES,
    ids=[c[0] for c in CASES],
)
async def test_exactly_one_message_of_the_right_type(
    gateway: tuple[httpx.AsyncClient, AuditStore],
    idp: FakeIdp,
    name: str,
    method: str,
    path: str,
    who: str | None,
    body: str | None,
    status: int,
    expected: list[tuple[str, str, int, str]],
    studies: list[str],
) -> None:
    client, store = gateway
    headers: dict[str, str] = {}
    if who == "user":
        headers = bearer(idp.token(sub="north-clinician", jti="jti-" + name))
    elif who == "forged":
        headers = bearer(idp.token(key=ECKey.generate_key("P-256", {"kid": "k1"})))
    elif who in ("auditor", "auditor-pwd"):
        acr = "urn:zt:acr:mfa" if who == "auditor" else "urn:zt:acr:pwd"
        headers = bearer(idp.token(sub="auditor", realm_access={"roles": ["auditor"]}, acr=acr))
    content = None
    if body is not None:
        extra, content = stow(A, PE_PREAMBLE if body == "pe" else None)
        headers |= extra
    before = store.last_seq()
    response = await client.request(method, path, headers=headers, content=content)
    assert response.status_code == status, response.text
    rows = store.search(Filters(after_seq=before))
    got = [(r["event_id"], r["event_action"], r["outcome"], r["event_types"]) for r in rows]
    assert got == expected
    assert {r["request_id"] for r in rows} == {response.headers["x-request-id"]}
    for row in rows:
        assert validate(row["message"]) == []
    first = ET.fromstring(rows[0]["message"])  # noqa: S314 - our own output
    user = first.find("ActiveParticipant")
    assert user is not None and user.get("NetworkAccessPointID") == "127.0.0.9"
    if who == "user":
        assert user.get("UserID") == "north-clinician"
        assert user.get("UserName") == f"{PUBLIC_URL}<north-clinician@{idp.claims()['iss']}>"
        ids = [o.get("ParticipantObjectID") for o in first.iter("ParticipantObjectIdentification")]
        assert "jti-" + name in ids
    assert study_objects(first) == studies
    participants = [p.get("UserID") for p in first.findall("ActiveParticipant")]
    # The archive is a participant exactly when the request reached it.
    assert ("https://archive.test:8042" in participants) == (
        expected[0][0] != "110113" and name != "audit-read"
    )
    assert store.verify() == []


async def _audit_down(tmp_path: Path, archive: FakeArchive, idp: FakeIdp, requests: Any) -> None:
    settings = make_settings(
        tmp_path, audit={"database_url": f"sqlite:///{tmp_path}/missing/audit.db"}
    )
    app = create_app(
        settings, archive_transport=archive.transport(), idp_transport=idp.transport(),
        authorizer=OnlyStudyA(),
    )  # fmt: skip
    async for client in _client(app):
        token = bearer(idp.token())
        for method, path, body in requests:
            headers, content = stow(A) if body else ({}, None)
            response = await client.request(method, path, headers=token | headers, content=content)
            assert response.status_code == 503, (method, path)
            assert response.headers["retry-after"]
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["audit"] == "unavailable"


@pytest.mark.anyio
@pytest.mark.control("AO-2")
async def test_unwritable_audit_store_fails_closed(
    tmp_path: Path, archive: FakeArchive, idp: FakeIdp
) -> None:
    requests = [
        ("GET", "/dicom-web/studies", False),
        ("GET", "/dicom-web/series?Modality=CT", False),
        ("POST", "/dicom-web/studies", True),
    ]
    await _audit_down(tmp_path, archive, idp, requests)
    assert [r for r in archive.requests if r.url.path != "/system"] == []  # the archive saw nothing


@pytest.mark.anyio
async def test_unwritable_audit_store_resolves_no_owner(
    tmp_path: Path, archive: FakeArchive, idp: FakeIdp
) -> None:
    requests = [
        ("GET", f"/dicom-web/studies/{A}", False),
        ("DELETE", f"/dicom-web/studies/{A}", False),
    ]
    await _audit_down(tmp_path, archive, idp, requests)
    assert [r for r in archive.requests if r.url.path != "/system"] == []


def _query_ctx(n: int) -> RequestContext:
    from dicomweb_gateway.context import Principal

    who = Principal("user-1", "https://idp.test", "cli", frozenset({"openid"}), jti=f"j{n}")
    return RequestContext(
        f"req-{n}",
        "GET",
        "/dicom-web/studies",
        "127.0.0.9",
        transaction="search_for_studies",
        action=Action.SEARCH,
        principal=who,
        status=200,
        forwarded=True,
    )


@pytest.mark.anyio
@pytest.mark.control("VA-6")
async def test_group_commit_each_answer_waits_for_its_own_durable_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    auditor = Auditor(store)
    transactions: list[int] = []
    real = store.append_many

    def counting(batches: Any) -> list[int]:
        transactions.append(len(batches))
        return real(batches)

    monkeypatch.setattr(store, "append_many", counting)

    async def one(n: int) -> int:
        await auditor.record(_query_ctx(n))
        # When record() returns, this request's own record is committed.
        found = store.search(Filters(request_id=f"req-{n}"))
        return len(found)

    counts = await asyncio.gather(*(one(n) for n in range(30)))
    assert all(c >= 1 for c in counts)
    assert sum(transactions) == 30 and len(transactions) < 30  # requests shared transactions
    assert store.verify() == []  # one unbroken chain across the shared transactions
    await auditor.close()
    store.dispose()


@pytest.mark.anyio
@pytest.mark.control("AO-2")
async def test_group_commit_failure_withholds_every_answer_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from dicomweb_gateway.audit.store import AuditStoreError
    from dicomweb_gateway.errors import GatewayError

    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    auditor = Auditor(store)

    def failing(batches: Any) -> list[int]:
        raise AuditStoreError("audit write failed: OperationalError")

    monkeypatch.setattr(store, "append_many", failing)
    results = await asyncio.gather(
        *(auditor.record(_query_ctx(n)) for n in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, GatewayError) and r.status == 503 for r in results), results
    await auditor.close()
    store.dispose()


# --- VA-7: every request leaves exactly one record, whatever its status; AP-3, AP-6 ----------


@pytest.fixture
async def edge(
    tmp_path: Path, archive: FakeArchive, idp: FakeIdp
) -> AsyncIterator[tuple[httpx.AsyncClient, AuditStore]]:
    url = f"sqlite:///{tmp_path}/audit.db"
    settings = make_settings(
        tmp_path, audit={"database_url": url}, limits={"max_body_bytes": 10_000}
    )
    app = create_app(
        settings, archive_transport=archive.transport(), idp_transport=idp.transport(),
        authorizer=OnlyStudyA(),
    )  # fmt: skip

    async def boom(request: Any) -> Any:
        raise RuntimeError("internal detail /srv/secret/path")

    app.add_route("/boom", boom, methods=["GET"])
    store = AuditStore(url)
    async for client in _client(app):
        yield client, store
    store.dispose()


def _chunks(size: int) -> Any:
    async def gen() -> AsyncIterator[bytes]:
        for _ in range(size // 1000):
            yield b"x" * 1000

    return gen()


# (name, method, path, who, body, status, EventTypeCode of the one Security Alert)
REFUSALS = [
    ("path-guard-tools", "GET", "/tools/lookup", None, None, 404),
    ("path-guard-patients", "GET", "/patients", "user", None, 404),
    ("path-guard-case", "GET", "/DICOM-WEB/studies", "user", None, 404),
    ("unknown-route", "GET", "/no/such/route", "user", None, 404),
    ("unknown-dicomweb", "GET", "/dicom-web/nope", "user", None, 404),
    ("method-audit", "DELETE", "/audit", "user", None, 405),
    ("method-dicomweb", "PUT", "/dicom-web/studies", "user", None, 405),
    ("malformed-qido-token", "GET", "/dicom-web/studies?NoSuchKey=1", "user", None, 400),
    ("malformed-qido-anon", "GET", "/dicom-web/studies?PatientID=%ff", None, None, 400),
    ("malformed-audit-filter", "GET", "/audit?limit=abc", "auditor", None, 400),
    ("too-large-declared", "PATCH", f"/admin/studies/{A}/labels", "user", "big", 413),
    ("too-large-chunked", "PATCH", f"/admin/studies/{A}/labels", "user", "chunked", 413),
    ("too-large-anon", "PATCH", f"/admin/studies/{A}/labels", None, "big", 413),
    ("unhandled", "GET", "/boom", None, None, 500),
]  # fmt: skip


@pytest.mark.anyio
@pytest.mark.control("VA-7")
@pytest.mark.parametrize(
    ("name", "method", "path", "who", "body", "status"), REFUSALS, ids=[c[0] for c in REFUSALS]
)
async def test_every_refusal_leaves_exactly_one_record(
    edge: tuple[httpx.AsyncClient, AuditStore],
    idp: FakeIdp,
    name: str,
    method: str,
    path: str,
    who: str | None,
    body: str | None,
    status: int,
) -> None:
    client, store = edge
    headers: dict[str, str] = {}
    if who == "user":
        headers = bearer(idp.token(sub="north-clinician", jti="jti-" + name))
    elif who == "auditor":
        headers = bearer(
            idp.token(sub="auditor", realm_access={"roles": ["auditor"]}, acr="urn:zt:acr:mfa")
        )
    content: Any = None
    if body == "big":
        content = b'{"reason": "' + b"x" * 50_000 + b'"}'
    elif body == "chunked":
        content = _chunks(200_000)
    before = store.last_seq()
    response = await client.request(method, path, headers=headers, content=content)
    assert response.status_code == status, response.text
    # AP-6: the safe error, with the security headers, nothing internal.
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "Traceback" not in response.text and "/srv/secret" not in response.text
    rows = store.search(Filters(after_seq=before))
    assert [r["request_id"] for r in rows] == [response.headers["x-request-id"]]
    [row] = rows
    outcome = 8 if status >= 500 else 4
    assert (row["event_id"], row["event_action"], row["outcome"], row["event_types"]) == (
        "110113", "E", outcome, "110132",
    )  # fmt: skip
    assert validate(row["message"]) == []
    message = ET.fromstring(row["message"])  # noqa: S314 - our own output
    user = message.find("ActiveParticipant")
    assert user is not None
    expected_user = {"user": "north-clinician", "auditor": "auditor"}.get(who or "", "127.0.0.9")
    assert user.get("UserID") == expected_user
    assert row["user_id"] == (expected_user if who else None)
    description = message.findtext("EventIdentification/EventOutcomeDescription") or ""
    assert f"HTTP {status}" in description
    assert store.verify() == [] and store.check_content() == []


@pytest.mark.anyio
@pytest.mark.control("VA-6")
async def test_control_characters_in_a_path_leave_a_well_formed_record(
    edge: tuple[httpx.AsyncClient, AuditStore],
) -> None:
    """Issue 11 finding 4: GET /admin/studies/1.2.3%01%1b used to store a raw control char."""
    client, store = edge
    before = store.last_seq()
    response = await client.get("/admin/studies/1.2.3%01%1b%c3%28%7f")
    # Parsed before authentication (pipeline.run): a malformed UID is 400, for anyone.
    assert response.status_code == 400 and response.json()["error"] == "invalid_uid"
    [row] = store.search(Filters(after_seq=before))
    assert validate(row["message"]) == []
    subject = ET.fromstring(row["message"]).find("ParticipantObjectIdentification")  # noqa: S314
    assert subject is not None
    assert subject.get("ParticipantObjectID", "").startswith("/admin/studies/1.2.3\\x01\\x1b")
    assert store.verify() == [] and store.check_content() == []


@pytest.mark.anyio
@pytest.mark.control("VA-7")
async def test_rate_limited_requests_are_recorded(
    tmp_path: Path, archive: FakeArchive, idp: FakeIdp
) -> None:
    url = f"sqlite:///{tmp_path}/audit.db"
    settings = make_settings(
        tmp_path, audit={"database_url": url}, limits={"requests_per_minute": 2}
    )
    app = create_app(
        settings, archive_transport=archive.transport(), idp_transport=idp.transport(),
        authorizer=OnlyStudyA(),
    )  # fmt: skip
    store = AuditStore(url)
    async for client in _client(app):
        token = bearer(idp.token(sub="north-clinician"))
        responses = [await client.get("/dicom-web/studies", headers=token) for _ in range(6)]
    assert 429 in [r.status_code for r in responses]
    rows = list(store.iter_all())
    assert [r["request_id"] for r in rows] == [r.headers["x-request-id"] for r in responses]
    limited = [row for row, r in zip(rows, responses, strict=True) if r.status_code == 429]
    assert all(
        (r["event_id"], r["event_types"], r["outcome"]) == ("110113", "110132", 4) for r in limited
    )
    store.dispose()


@pytest.mark.anyio
@pytest.mark.control("VA-7")
async def test_admin_label_read_is_recorded(
    edge: tuple[httpx.AsyncClient, AuditStore], idp: FakeIdp
) -> None:
    """An allowed admin read is recorded too (110103 R), not only its refusals."""
    client, store = edge
    before = store.last_seq()
    response = await client.get(f"/admin/studies/{A}", headers=bearer(idp.token()))
    rows = store.search(Filters(after_seq=before))
    assert [r["request_id"] for r in rows] == [response.headers["x-request-id"]]
