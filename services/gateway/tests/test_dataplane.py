"""The data plane's decision endpoint and the edge log auditor, in process (issue 13; AP-8).

`/_zt/authz` answers 204 only for a canonical bulk read by a single bearer token that the policy
allows, with the edge's secret, and only when the edge's cache key is the study decided on; its
X-Accel-Expires never outlives the decision bound or the token. Everything else is "not here"
(403, nothing recorded), so the gateway's own route answers and audits it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from dicomweb_gateway.app import create_app
from dicomweb_gateway.audit.edgelog import Delivery, delivered, parse_line
from dicomweb_gateway.audit.messages import Participants
from gateway_fakes import PUBLIC_URL, FakeArchive, FakeIdp, make_settings
from test_dicomweb import A_SERIES, A_SOP, A, B, OnlyStudyA, RecordingAuditor

pytestmark = [pytest.mark.anyio, pytest.mark.control("AP-8")]

SECRET = "edge-secret-for-tests-0123456789"
FRAME = f"/dicom-web/studies/{A}/series/{A_SERIES}/instances/{A_SOP}/frames/1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def idp() -> FakeIdp:
    return FakeIdp()


@pytest.fixture
def auditor() -> RecordingAuditor:
    return RecordingAuditor()


@pytest.fixture
async def client(
    tmp_path: Path, idp: FakeIdp, auditor: RecordingAuditor
) -> AsyncIterator[httpx.AsyncClient]:
    archive = FakeArchive()
    archive.add(A, A_SERIES, A_SOP, "ZT-P001")
    secret = tmp_path / "edge-secret"
    secret.write_text(SECRET)
    settings = make_settings(
        tmp_path, edge={"secret_file": str(secret), "decision_ttl_seconds": 10}
    )
    app = create_app(
        settings,
        archive_transport=archive.transport(),
        idp_transport=idp.transport(),
        authorizer=OnlyStudyA(),
        auditor=auditor,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as c:
            yield c


def decide_headers(token: str, uri: str = FRAME, key: str = A, **extra: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "X-Zt-Edge-Secret": SECRET,
        "X-Zt-Original-Uri": uri,
        "X-Zt-Original-Method": "GET",
        "X-Zt-Key": key,
        **extra,
    }


async def test_an_allowed_read_is_decided_audited_and_bounded(
    client: httpx.AsyncClient, idp: FakeIdp, auditor: RecordingAuditor
) -> None:
    r = await client.get("/_zt/authz", headers=decide_headers(idp.token()))
    assert r.status_code == 204
    assert 0 < int(r.headers["x-accel-expires"]) <= 10
    (ctx,) = [c for c in auditor.records if c.path == FRAME]
    assert r.headers["x-zt-decision"] == ctx.request_id and ctx.status == 200


async def test_the_bound_never_outlives_the_token(client: httpx.AsyncClient, idp: FakeIdp) -> None:
    soon = int(time.time()) + 4
    r = await client.get("/_zt/authz", headers=decide_headers(idp.token(exp=soon)))
    assert r.status_code == 204
    assert int(r.headers["x-accel-expires"]) <= 4


@pytest.mark.parametrize(
    "change",
    [
        {"key": B},  # the edge would file the decision under another study
        {"uri": f"/dicom-web/studies/{B}/metadata", "key": B},  # a study the caller may not see
        {"uri": FRAME + "?quality=90"},  # a query string is the gateway's
        {"uri": f"/dicom-web/studies/{A}/series?limit=1"},  # not a streamed transaction
        {"dpop": "x"},  # a proof is checked per request by the gateway
    ],
)
async def test_anything_else_is_not_here_and_not_recorded(
    client: httpx.AsyncClient, idp: FakeIdp, auditor: RecordingAuditor, change: dict[str, str]
) -> None:
    headers = decide_headers(idp.token(), uri=change.get("uri", FRAME), key=change.get("key", A))
    if "dpop" in change:
        headers["DPoP"] = change["dpop"]
    r = await client.get("/_zt/authz", headers=headers)
    assert r.status_code == 403 and r.headers["x-accel-expires"] == "0"
    assert "x-zt-decision" not in r.headers
    assert [c for c in auditor.records if c.path != "/_zt/authz"] == []


async def test_two_authorization_headers_are_not_decided(
    client: httpx.AsyncClient, idp: FakeIdp
) -> None:
    headers = [*decide_headers(idp.token()).items(), ("Authorization", "Bearer other")]
    r = await client.get("/_zt/authz", headers=headers)
    assert r.status_code == 403


@pytest.mark.parametrize("secret", ["", "wrong", SECRET[:-1]])
async def test_without_the_edge_secret_nothing_answers(
    client: httpx.AsyncClient, idp: FakeIdp, secret: str
) -> None:
    headers = decide_headers(idp.token()) | {"X-Zt-Edge-Secret": secret}
    r = await client.get("/_zt/authz", headers=headers)
    assert r.status_code == 404


def test_a_hostile_log_line_never_stops_the_edge_audit() -> None:
    """Bytes a client chose (not UTF-8, or breaking the JSON) become a refusal record."""
    assert parse_line(b'{"m":"GET","u":"/\xff\xfe","s":404,"g":""}')["u"] == "/\ufffd\ufffd"
    broken = parse_line(b'{"m":"GET","u":"/x\x00"}}}')
    assert broken["s"] == 400 and broken["g"] == ""


def test_a_delivery_record_copies_the_decision_and_says_what_was_delivered() -> None:
    import base64
    import xml.etree.ElementTree as ET

    from dicomweb_gateway.audit.messages import messages_for
    from dicomweb_gateway.audit.schema import validate
    from dicomweb_gateway.audit.store import now_utc
    from dicomweb_gateway.context import Action, Principal, RequestContext, StudyRef

    ctx = RequestContext("r1", "GET", FRAME, "127.0.0.1", transaction="retrieve_frames")
    ctx.action, ctx.status, ctx.forwarded = Action.READ, 200, True
    ctx.principal = Principal("alice", "https://idp", "ohif", frozenset({"openid"}))
    ctx.add_study(StudyRef(A, "ZT-P001"))
    who = Participants("zt-gateway", "gw", "archive", "ar")
    (decision,) = messages_for(ctx, who, now_utc())
    row = {
        "message": decision.xml,
        "user_id": "alice",
        "patients": '["ZT-P001"]',
        "studies": f'["{A}"]',
    }
    d = Delivery(requests=3, bytes=1200)
    d.statuses.update({200: 2, 404: 1})
    message = delivered(row, d, now_utc())
    assert validate(message.xml) == []
    assert (message.outcome, message.studies, message.patients) == (4, (A,), ("ZT-P001",))
    details = [
        base64.b64decode(e.get("value", "")).decode()
        for e in ET.fromstring(message.xml).iter("ParticipantObjectDetail")  # noqa: S314
        if e.get("type") == "Delivered"
    ]
    assert details == ["requests=3;bytes=1200;status=200x2,404x1"]
    assert json.loads(row["studies"]) == [A]
