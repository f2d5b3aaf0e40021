"""Auditor hooks (preflight, record, from_settings) and `GET /audit` for auditors only."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from dicomweb_gateway.audit import Auditor, router
from dicomweb_gateway.audit.messages import Participants
from dicomweb_gateway.audit.store import AuditStore, Filters
from dicomweb_gateway.authorize import Authorizer
from dicomweb_gateway.context import Action, Principal, RequestContext, StudyRef
from dicomweb_gateway.errors import GatewayError, invalid_token, missing_credentials
from dicomweb_gateway.policy import decide, load_policy
from dicomweb_gateway.ratelimit import RateLimiter
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from gateway_fakes import bare_services
from policy_helpers import DEMO_POLICY

ISS = "https://localhost:9443/realms/dicomweb"
WHO = Participants("zt-gateway", "localhost", "https://localhost:8042", "localhost")


def person(sub: str, roles: set[str], acr: str) -> Principal:
    return Principal(
        subject=sub, issuer=ISS, client_id="dicomweb-cli", scopes=frozenset({"openid"}),
        roles=frozenset(roles), acr=acr, jti=f"jti-{sub}", audience=("https://localhost:8443",),
    )  # fmt: skip


PEOPLE = {
    "auditor-mfa": person("auditor", {"auditor"}, "urn:zt:acr:mfa"),
    "auditor-phr": person("auditor", {"auditor"}, "urn:zt:acr:phr"),
    "auditor-pwd": person("auditor", {"auditor"}, "urn:zt:acr:pwd"),
    "clinician-mfa": person("north-clinician", {"clinician"}, "urn:zt:acr:mfa"),
}


class FakeAuthenticator:
    """Stands in for the gateway's token validation: the bearer value names a person."""

    async def authenticate(
        self, headers: Mapping[str, str], method: str, url: str, query: str
    ) -> Principal:
        value = headers.get("authorization", "")
        if not value:
            raise missing_credentials()
        name = value.removeprefix("Bearer ")
        if name not in PEOPLE:
            raise invalid_token("unknown test token")
        return PEOPLE[name]


class PolicyOnly:
    """The authorizer's action check with the demo policy file: the real decide() and the one
    place a decision becomes an error (`Authorizer._enforce`)."""

    policy = load_policy(DEMO_POLICY)

    async def check_action(self, ctx: RequestContext, action: Action) -> None:
        Authorizer._enforce(ctx, decide(ctx.principal, action, None, self.policy, time.time()))


def app_with(auditor: Auditor) -> FastAPI:
    app = FastAPI()
    app.state.services = bare_services(
        auditor=auditor,
        authorizer=PolicyOnly(),
        authenticator=FakeAuthenticator(),
        settings=SimpleNamespace(public_url="https://localhost:8443"),
        rate_limiter=RateLimiter(600),
    )
    app.include_router(router)

    @app.exception_handler(GatewayError)
    async def _error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        return JSONResponse({"error": exc.code}, exc.status, headers=exc.headers)

    return app


@pytest.fixture
def store(tmp_path: Path) -> AuditStore:
    s = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    yield s  # type: ignore[misc]
    s.dispose()


class Client:
    """Drives the ASGI app with httpx (no network)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def get(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="https://gw") as c:
                return await c.get(url, headers=headers or {})

        return asyncio.run(go())


@pytest.fixture
def client(store: AuditStore) -> Client:
    auditor = Auditor(store, WHO, public_url="https://localhost:8443")
    # Some history to read: two retrievals by different users on different patients.
    for sub, patient, study in (("alice", "ZT-P001", "1.2.1"), ("bob", "ZT-P002", "1.2.2")):
        ctx = RequestContext(
            "seed", "GET", f"/dicom-web/studies/{study}", "127.0.0.1", action=Action.READ,
            principal=person(sub, {"clinician"}, "urn:zt:acr:mfa"), status=200, forwarded=True,
        )  # fmt: skip
        ctx.add_study(StudyRef(study, patient))
        asyncio.run(auditor.record(ctx))
    return Client(app_with(auditor))


def events(store: AuditStore, after: int) -> list[tuple[str, int, str]]:
    rows = store.search(Filters(after_seq=after))
    return [(r["event_id"], r["outcome"], r["event_types"]) for r in rows]


@pytest.mark.control("VA-4")
@pytest.mark.parametrize(
    ("token", "status", "challenge", "event"),
    [
        ("auditor-mfa", 200, None, ("110101", 0, "")),
        ("auditor-phr", 200, None, ("110101", 0, "")),
        (
            "auditor-pwd",
            401,
            'error="insufficient_user_authentication"',
            ("110113", 4, "110132"),
        ),
        ("clinician-mfa", 403, 'error="insufficient_scope"', ("110113", 4, "110132")),
        ("forged", 401, 'error="invalid_token"', ("110113", 4, "110126")),
        (None, 401, 'Bearer realm="dicomweb"', ("110113", 4, "110126")),
    ],
)
def test_only_auditors_with_mfa_read_and_every_read_is_audited(
    client: Client,
    store: AuditStore,
    token: str | None,
    status: int,
    challenge: str | None,
    event: tuple[str, int, str],
) -> None:
    before = store.last_seq()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = client.get("/audit", headers=headers)
    assert response.status_code == status
    if challenge:
        assert challenge in response.headers["www-authenticate"]
        assert "records" not in response.json()
    if token == "auditor-pwd":
        assert 'acr_values="urn:zt:acr:mfa urn:zt:acr:phr"' in response.headers["www-authenticate"]
    assert events(store, before) == [event]  # exactly one message, of the right type


def test_audit_log_used_names_the_log_and_the_auditor(client: Client, store: AuditStore) -> None:
    before = store.last_seq()
    response = client.get("/audit?user=alice", headers={"Authorization": "Bearer auditor-mfa"})
    assert response.status_code == 200
    [row] = store.search(Filters(after_seq=before))
    root = ET.fromstring(row["message"])  # noqa: S314 - our own output
    assert root.find("ActiveParticipant").get("UserID") == "auditor"  # type: ignore[union-attr]
    obj = root.find("ParticipantObjectIdentification")
    assert obj is not None and obj.get("ParticipantObjectID") == "/audit?user=alice"
    assert obj.findtext("ParticipantObjectName") == "Security Audit Log"


# (query, users of the records returned)
FILTERS = [
    ("", ["alice", "bob"]),
    ("?user=bob", ["bob"]),
    ("?patient=ZT-P001", ["alice"]),
    ("?study=1.2.2", ["bob"]),
    ("?outcome=4", []),
    ("?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z", []),
    ("?event=110104&limit=1&offset=1", ["bob"]),
]


@pytest.mark.parametrize(("query", "users"), FILTERS)
def test_filters(client: Client, query: str, users: list[str]) -> None:
    response = client.get(f"/audit{query}", headers={"Authorization": "Bearer auditor-mfa"})
    assert response.status_code == 200
    records = [r for r in response.json()["records"] if r["event_id"] == "110104"]
    assert [r["user"] for r in records] == users
    for r in records:
        assert r["message"].startswith("<AuditMessage>") and len(r["hash"]) == 64


def test_bad_filter_is_refused_and_reads_nothing(client: Client, store: AuditStore) -> None:
    before = store.last_seq()
    response = client.get("/audit?outcome=99", headers={"Authorization": "Bearer auditor-mfa"})
    assert response.status_code == 422
    assert store.last_seq() == before


@pytest.mark.control("AO-2")
def test_preflight_fails_closed_when_the_store_is_unwritable(tmp_path: Path) -> None:
    auditor = Auditor(AuditStore(f"sqlite:///{tmp_path}/missing/audit.db"), WHO)
    with pytest.raises(GatewayError) as raised:
        asyncio.run(auditor.preflight())
    assert raised.value.status == 503 and "Retry-After" in raised.value.headers
    ctx = RequestContext("r", "GET", "/dicom-web/studies", "127.0.0.1", action=Action.SEARCH)
    ctx.status = 200
    with pytest.raises(GatewayError) as raised:
        asyncio.run(auditor.record(ctx))
    assert raised.value.status == 503


def test_preflight_is_cached_briefly(store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> None:
    auditor = Auditor(store, WHO)
    calls: list[int] = []
    original = store.check_writable
    monkeypatch.setattr(store, "check_writable", lambda: calls.append(1) or original())

    async def twice() -> None:
        await auditor.preflight()
        await auditor.preflight()

    asyncio.run(twice())
    assert calls == [1]


def test_from_settings(tmp_path: Path) -> None:
    from dicomweb_gateway.settings import parse_settings

    for name in ("gw.pem", "gw.key", "ca.pem", "pw"):
        (tmp_path / name).write_text("x" * 20)
    raw: dict[str, Any] = {
        "public_url": "https://localhost:8443",
        "tls": {"cert": str(tmp_path / "gw.pem"), "key": str(tmp_path / "gw.key")},
        "run_dir": str(tmp_path),
        "oidc": {"issuer": ISS, "ca_cert": str(tmp_path / "ca.pem")},
        "archive": {
            "url": "https://127.0.0.1:8042", "username": "gateway",
            "password_file": str(tmp_path / "pw"), "ca_cert": str(tmp_path / "ca.pem"),
        },
        "database_url": f"sqlite:///{tmp_path}/gateway.db",
        "policy": {"file": str(tmp_path / "policy.yaml")},
        "audit": {"database_url": f"sqlite:///{tmp_path}/audit.db", "source_id": "gw-test"},
    }  # fmt: skip
    auditor = Auditor.from_settings(parse_settings(raw))
    assert auditor.participants == Participants(
        "gw-test", "localhost", "https://127.0.0.1:8042", "127.0.0.1"
    )
    assert auditor.shipper is None
    ctx = RequestContext("r1", "GET", "/dicom-web/studies", "127.0.0.1", action=Action.SEARCH)
    ctx.status = 200
    asyncio.run(auditor.preflight())
    asyncio.run(auditor.record(ctx))
    assert auditor.store is not None
    [row] = auditor.store.search(Filters(request_id="r1"))
    assert row["event_id"] == "110112"
    asyncio.run(auditor.close())
