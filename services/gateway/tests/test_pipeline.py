"""pipeline.run: one order for every route, whatever the route declares (issue 17).

parse -> authenticate -> audit preflight -> resolve -> authorize the action -> owner (a study
from the path) -> forward; the audit record at the end of every request, and nothing of a later
step runs when an earlier one refuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from dicomweb_gateway.context import Action, Principal, RequestContext, StudyRef
from dicomweb_gateway.errors import bad_request, insufficient_scope, missing_credentials
from dicomweb_gateway.pipeline import Spec, StudyFrom, run
from dicomweb_gateway.ratelimit import RateLimiter
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from gateway_fakes import bare_services
from policy_helpers import principal

pytestmark = pytest.mark.anyio

STEPS: list[str] = []


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Authenticator:
    async def authenticate(
        self, headers: Mapping[str, str], method: str, url: str, query: str
    ) -> Principal:
        STEPS.append("authenticate")
        if headers.get("authorization") != "Bearer ok":
            raise missing_credentials()
        return principal("openid", "clinician", subject="u")


class Auditor:
    def __init__(self) -> None:
        self.records: list[RequestContext] = []

    async def preflight(self) -> None:
        STEPS.append("preflight")

    async def record(self, ctx: RequestContext) -> None:
        STEPS.append("record")
        self.records.append(ctx)


class Authorizer:
    async def check_action(self, ctx: RequestContext, action: Action) -> None:
        STEPS.append(f"check_action:{action.value}")
        if ctx.request_id and ctx.query == "deny=action":
            raise insufficient_scope("no")


async def resolve(request: Request, ctx: RequestContext, uid: str) -> str:
    STEPS.append("resolve")
    return uid.replace("pseudo", "real")


async def owner(request: Request, ctx: RequestContext, uid: str) -> StudyRef:
    STEPS.append(f"owner:{uid}")
    if ctx.query == "deny=owner":
        raise insufficient_scope("not this study")
    return StudyRef(uid, "P1")


async def forward(request: Request, ctx: RequestContext, uid: str) -> Response:
    STEPS.append("forward")
    assert ctx.owner is not None
    return JSONResponse({"study": uid, "owner": ctx.owner.study_instance_uid})


SPEC: Spec[str] = Spec("t", Action.READ, StudyFrom.PATH, forward, owner=owner, resolve=resolve)


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, Auditor]]:
    app = FastAPI()
    auditor = Auditor()

    async def route(request: Request) -> Response:
        async def parse(request: Request) -> tuple[Spec[str], str]:
            STEPS.append("parse")
            uid: str = request.path_params["uid"]
            if not uid[0].isalpha():
                raise bad_request("invalid_uid", "malformed")
            return SPEC, uid

        return await run(request, parse, transaction="t", action=Action.READ)

    app.add_route("/s/{uid}", route, methods=["GET"])
    app.state.services = bare_services(
        settings=SimpleNamespace(public_url="https://gw.invalid"),
        authenticator=Authenticator(),
        authorizer=Authorizer(),
        auditor=auditor,
        rate_limiter=RateLimiter(10_000),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://gw.invalid") as c:
        STEPS.clear()
        yield c, auditor


@pytest.mark.control("AP-1")
async def test_every_step_in_order(client: tuple[httpx.AsyncClient, Any]) -> None:
    c, auditor = client
    r = await c.get("/s/pseudo1", headers={"Authorization": "Bearer ok"})
    assert r.status_code == 200 and r.json() == {"study": "real1", "owner": "real1"}
    assert STEPS == [
        "parse",
        "authenticate",
        "preflight",
        "resolve",
        "check_action:read",
        "owner:real1",
        "forward",
        "record",
    ]
    assert auditor.records[-1].owner == StudyRef("real1", "P1")


@pytest.mark.control("AP-1")
@pytest.mark.parametrize(
    ("path", "headers", "status", "steps"),
    [
        # Refused before authentication: the record still names the caller (VA-7).
        ("/s/1bad", {"Authorization": "Bearer ok"}, 400, ["parse", "authenticate", "record"]),
        ("/s/pseudo1", {}, 401, ["parse", "authenticate", "record"]),
        (
            "/s/pseudo1?deny=action",
            {"Authorization": "Bearer ok"},
            403,
            ["parse", "authenticate", "preflight", "resolve", "check_action:read", "record"],
        ),
        (
            "/s/pseudo1?deny=owner",
            {"Authorization": "Bearer ok"},
            403,
            [
                "parse",
                "authenticate",
                "preflight",
                "resolve",
                "check_action:read",
                "owner:real1",
                "record",
            ],
        ),
    ],
)
async def test_a_refusal_stops_every_later_step_and_is_audited(
    client: tuple[httpx.AsyncClient, Any],
    path: str,
    headers: dict[str, str],
    status: int,
    steps: list[str],
) -> None:
    c, auditor = client
    r = await c.get(path, headers=headers)
    assert r.status_code == status
    assert steps == STEPS  # never "forward"
    assert auditor.records[-1].status == status and auditor.records[-1].transaction == "t"


def test_a_study_from_the_path_needs_an_owner_step() -> None:
    with pytest.raises(ValueError, match="owner"):
        Spec("t", Action.READ, StudyFrom.PATH, forward)
    with pytest.raises(ValueError, match="owner"):
        Spec("t", Action.READ, StudyFrom.INDEX, forward, owner=owner)
