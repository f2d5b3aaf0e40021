"""The /admin API: label changes and break-glass, with fresh MFA, audited, bad input is 400."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from dicomweb_gateway import admin
from dicomweb_gateway.authorize import Authorizer
from dicomweb_gateway.context import Principal, RequestContext
from dicomweb_gateway.errors import missing_credentials
from dicomweb_gateway.ratelimit import RateLimiter
from fastapi import FastAPI
from gateway_fakes import bare_services
from policy_helpers import DEMO_INGEST_RULES, DEMO_POLICY, NOW, principal

pytestmark = pytest.mark.anyio
VIP_UID = "1.2.826.0.1.3680043.10.1.3"
NORTH_UID = "1.2.826.0.1.3680043.10.1.1"
MFA, PWD = "urn:zt:acr:mfa", "urn:zt:acr:pwd"

USERS: dict[str, Principal] = {
    "admin": principal("openid", "admin", acr=MFA, subject="admin"),
    "admin-stale": principal("openid", "admin", acr=MFA, auth_age=301, subject="admin"),
    "admin-pwd": principal("openid", "admin", acr=PWD, subject="admin"),
    "er": principal(
        "user/ImagingStudy.rs", "clinician break-glass", "/site-north", acr=MFA, subject="er"
    ),
    "er-pwd": principal(
        "user/ImagingStudy.rs", "clinician break-glass", "/site-north", acr=PWD, subject="er"
    ),
    "north": principal(
        "user/ImagingStudy.rs", "clinician", "/site-north", acr=MFA, subject="north"
    ),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeAuthenticator:
    """`Authorization: Bearer <user>` names a principal from USERS."""

    async def authenticate(
        self, headers: Mapping[str, str], method: str, url: str, query: str
    ) -> Principal:
        name = headers.get("authorization", "").removeprefix("Bearer ")
        if name not in USERS:
            raise missing_credentials()
        return USERS[name]


class RecordingAuditor:
    def __init__(self) -> None:
        self.records: list[RequestContext] = []

    async def preflight(self) -> None:
        return None

    async def record(self, ctx: RequestContext) -> None:
        self.records.append(ctx)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    settings = SimpleNamespace(
        database_url=f"sqlite:///{tmp_path}/gateway.db",
        public_url="https://gateway.invalid",
        policy=SimpleNamespace(
            file=DEMO_POLICY, ingest_rules_file=DEMO_INGEST_RULES, change_feed_interval_seconds=1
        ),
    )
    authorizer = Authorizer.from_settings(settings)  # type: ignore[arg-type]
    authorizer.clock = lambda: NOW
    await authorizer.store.record_ingest(VIP_UID, "ZT-P004", {"site:north", "vip"}, "stow")
    await authorizer.store.record_ingest(NORTH_UID, "ZT-P001", {"site:north"}, "stow")
    app = FastAPI()
    app.include_router(admin.router)
    app.state.services = bare_services(
        settings=settings,
        authorizer=authorizer,
        authenticator=FakeAuthenticator(),
        auditor=RecordingAuditor(),
        rate_limiter=RateLimiter(10_000),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://gateway.invalid") as c:
        yield c, app
    await authorizer.close()


def as_user(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}"}


async def labels(app: FastAPI, uid: str) -> frozenset[str]:
    return (await app.state.services.authorizer.store.study(uid)).labels  # type: ignore[no-any-return]


@pytest.mark.control("DA-2")
async def test_admin_changes_labels_audited(api: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, app = api
    body = {"add": ["legal-hold"], "remove": ["vip"], "reason": "court order 17"}
    response = await client.patch(
        f"/admin/studies/{VIP_UID}/labels", json=body, headers=as_user("admin")
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "study_instance_uid": VIP_UID,
        "labels": ["legal-hold", "site:north"],
        "added": ["legal-hold"],
        "removed": ["vip"],
    }
    assert await labels(app, VIP_UID) == {"legal-hold", "site:north"}
    record = app.state.services.auditor.records[-1]
    assert record.extra["security_event"]["event_type"] == "110135"
    assert record.alerts[0][0] == "object-security-attributes-changed"
    read = await client.get(f"/admin/studies/{VIP_UID}", headers=as_user("admin"))
    assert read.json()["history"][-1]["reason"] == "court order 17"


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        (
            f"/admin/studies/{VIP_UID}/labels",
            {"add": ["top-secret"], "reason": "x"},
            "unknown_label",
        ),
        (f"/admin/studies/{VIP_UID}/labels", {"remove": ["VIP"], "reason": "x"}, "unknown_label"),
        ("/admin/studies/1.2.*/labels", {"remove": ["vip"], "reason": "x"}, "invalid_uid"),
        ("/admin/studies/1.02.3/labels", {"remove": ["vip"], "reason": "x"}, "invalid_uid"),
        (f"/admin/studies/{VIP_UID}/labels", {"remove": ["vip"]}, "invalid_request"),
        (f"/admin/studies/{VIP_UID}/labels", {"remove": "vip", "reason": "x"}, "invalid_request"),
        (
            f"/admin/studies/{VIP_UID}/labels",
            {"remove": ["vip"], "reason": "x", "extra": 1},
            "invalid_request",
        ),
    ],
)
async def test_bad_label_change_is_400_and_changes_nothing(
    api: tuple[httpx.AsyncClient, FastAPI], path: str, body: object, code: str
) -> None:
    client, app = api
    response = await client.patch(path, json=body, headers=as_user("admin"))
    assert response.status_code == 400
    assert response.json()["error"] == code
    assert await labels(app, VIP_UID) == {"site:north", "vip"}
    history = await app.state.services.authorizer.store.label_history(VIP_UID)
    assert [h.via for h in history] == ["stow"]  # only the ingest that created it


@pytest.mark.control("ID-4")
@pytest.mark.parametrize(
    ("user", "status", "needle"),
    [
        ("admin-stale", 401, 'max_age="300"'),
        ("admin-pwd", 401, 'acr_values="urn:zt:acr:mfa urn:zt:acr:phr"'),
        ("north", 403, 'error="insufficient_scope"'),
        ("nobody", 401, 'Bearer realm="dicomweb"'),
    ],
)
async def test_label_change_needs_role_and_fresh_mfa(
    api: tuple[httpx.AsyncClient, FastAPI], user: str, status: int, needle: str
) -> None:
    client, app = api
    response = await client.patch(
        f"/admin/studies/{VIP_UID}/labels",
        json={"remove": ["vip"], "reason": "test"},
        headers=as_user(user),
    )
    assert response.status_code == status
    assert needle in response.headers["WWW-Authenticate"]
    assert await labels(app, VIP_UID) == {"site:north", "vip"}
    assert app.state.services.auditor.records[-1].status == status


async def test_label_change_unknown_study_is_404(api: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, _ = api
    response = await client.patch(
        "/admin/studies/1.2.3.4/labels",
        json={"add": ["vip"], "reason": "x"},
        headers=as_user("admin"),
    )
    # an unknown study is denied by the policy (study-unknown) before the store is touched
    assert response.status_code in (403, 404)


@pytest.mark.control("DA-2")
async def test_break_glass_grants_one_study_for_a_limited_time(
    api: tuple[httpx.AsyncClient, FastAPI],
) -> None:
    client, app = api
    authorizer: Authorizer = app.state.services.authorizer
    er = USERS["er"]
    ctx = RequestContext("x", "GET", "/", "127.0.0.1", principal=er)
    assert await authorizer.permitted_studies(ctx, admin.Action.READ, {VIP_UID}) == set()
    response = await client.post(
        "/admin/break-glass",
        json={"study_instance_uid": VIP_UID, "reason": "unconscious patient in ER"},
        headers=as_user("er"),
    )
    assert response.status_code == 201, response.text
    grant = response.json()
    assert grant["study_instance_uid"] == VIP_UID
    assert grant["expires_in"] == 3600
    assert await authorizer.permitted_studies(ctx, admin.Action.READ, {VIP_UID}) == {VIP_UID}
    record = app.state.services.auditor.records[-1]
    assert record.extra["security_event"]["event_type"] == "110127"
    assert record.alerts == [
        ("emergency-override", record.alerts[0][1]),
    ]
    assert "unconscious patient in ER" in record.alerts[0][1]
    assert [s.study_instance_uid for s in record.studies] == [VIP_UID]
    # the grant lapses
    authorizer.clock = lambda: NOW + 3601
    assert await authorizer.permitted_studies(ctx, admin.Action.READ, {VIP_UID}) == set()


@pytest.mark.parametrize(
    ("user", "body", "status"),
    [
        ("er", {"study_instance_uid": VIP_UID, "reason": "short"}, 400),
        ("er", {"study_instance_uid": "1.2.3.*", "reason": "unconscious patient"}, 400),
        ("er", {"study_instance_uid": VIP_UID}, 400),
        ("er-pwd", {"study_instance_uid": VIP_UID, "reason": "unconscious patient"}, 401),
        ("north", {"study_instance_uid": VIP_UID, "reason": "unconscious patient"}, 403),
        ("er", {"study_instance_uid": "1.2.3.4", "reason": "unconscious patient"}, 403),
    ],
)
async def test_break_glass_refused(
    api: tuple[httpx.AsyncClient, FastAPI], user: str, body: object, status: int
) -> None:
    client, app = api
    response = await client.post("/admin/break-glass", json=body, headers=as_user(user))
    assert response.status_code == status
    er = USERS["er"]
    assert (
        await app.state.services.authorizer.store.active_grants(er.subject, er.issuer, _now())
        == set()
    )
    assert "security_event" not in app.state.services.auditor.records[-1].extra


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.fromtimestamp(NOW, UTC)


@pytest.mark.control("ID-9")
@pytest.mark.parametrize(
    ("user", "status"),
    [("admin", 200), ("admin-stale", 401), ("admin-pwd", 401), ("north", 403), ("er", 403)],
)
async def test_device_inventory_is_for_admins_only(
    api: tuple[httpx.AsyncClient, FastAPI], user: str, status: int
) -> None:
    """An action on no study is decided by the rules too: a clinician with a fresh MFA login is
    not an administrator (the `admin` rules name the role), and the inventory is not theirs."""
    client, app = api
    response = await client.get("/admin/devices", headers=as_user(user))
    assert response.status_code == status, response.text
    if status == 200:
        assert "devices" in response.json()
    else:
        assert "devices" not in response.text
        assert app.state.services.auditor.records[-1].status == status
