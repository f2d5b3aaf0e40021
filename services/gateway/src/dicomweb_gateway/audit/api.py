"""`GET /audit`: the audit log for auditors (role `auditor`, login `urn:zt:acr:mfa` or higher).

Reading the log is itself audited (Audit Log Used, 110101); a refused read is a Security Alert.
When the gateway's middleware already keeps a request context (`request.state.ctx`) it records
that context at the end; otherwise this route records its own.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from ..context import Action, Decision, Principal, RequestContext
from ..errors import GatewayError, insufficient_scope, step_up
from .store import Filters

if TYPE_CHECKING:
    from . import Auditor

router = APIRouter()

AUDITOR_ROLE = "auditor"
# ACR values from lowest to highest (docs/internals.md, identity contract).
ACR_LEVELS = ("urn:zt:acr:pwd", "urn:zt:acr:mfa", "urn:zt:acr:phr")
REQUIRED_ACR = "urn:zt:acr:mfa"
MAX_LIMIT = 1000


def acr_rank(acr: str | None) -> int:
    return ACR_LEVELS.index(acr) if acr in ACR_LEVELS else -1


def check_auditor(principal: Principal) -> Decision:
    """Role first (a non-auditor gets 403 whatever the login), then the login level."""
    if AUDITOR_ROLE not in principal.roles:
        return Decision(False, ("role-unauthorized",))
    if acr_rank(principal.acr) < acr_rank(REQUIRED_ACR):
        # RFC 9470: preferred value first.
        accepted = " ".join(ACR_LEVELS[acr_rank(REQUIRED_ACR) :])
        return Decision(False, ("role-ok", "acr-insufficient"), acr_values=accepted)
    return Decision(True, ("role-ok", "acr-ok"))


def _enforce(ctx: RequestContext, decision: Decision) -> None:
    ctx.decisions.append(decision)
    if decision.allow:
        return
    detail = ",".join(decision.reasons)
    if decision.acr_values:
        raise step_up(detail, decision.acr_values, None)
    raise insufficient_scope(detail)


def _context(request: Request) -> tuple[RequestContext, bool]:
    """The gateway's context for this request if it keeps one, else a new one we record."""
    ctx = getattr(request.state, "ctx", None)
    if isinstance(ctx, RequestContext):
        return ctx, False
    client = request.client.host if request.client else ""
    own = RequestContext(
        request_id=request.headers.get("x-request-id") or uuid.uuid4().hex,
        method=request.method,
        path=request.url.path,
        client_ip=client,
        query=request.url.query,
    )
    return own, True


async def _principal(request: Request, ctx: RequestContext, auditor: Auditor) -> Principal:
    if ctx.principal is not None:
        return ctx.principal
    authenticator = request.app.state.authenticator
    base = auditor.public_url or str(request.base_url).rstrip("/")
    principal: Principal = await authenticator.authenticate(
        request.headers, request.method, base + request.url.path, request.url.query
    )
    ctx.principal = principal
    return principal


@router.get("/audit")
async def read_audit(
    request: Request,
    since: datetime | None = None,
    until: datetime | None = None,
    user: str | None = None,
    patient: str | None = None,
    study: str | None = None,
    outcome: Annotated[int | None, Query(ge=0, le=12)] = None,
    event: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JSONResponse:
    """Audit records, oldest first, filtered; each with its A.5 XML and chain hash."""
    auditor: Auditor = request.app.state.auditor
    ctx, own = _context(request)
    ctx.transaction = "audit_log_used"
    ctx.action = Action.AUDIT_READ
    try:
        await auditor.preflight()
        principal = await _principal(request, ctx, auditor)
        _enforce(ctx, check_auditor(principal))
        filters = Filters(
            since, until, user, patient, study, outcome, event, limit=limit, offset=offset
        )
        rows = await auditor.search(filters)
    except GatewayError as exc:
        ctx.status, ctx.error_code, ctx.error_detail = exc.status, exc.code, exc.detail
        if own and exc.status != 503:
            await auditor.record(ctx)
        raise
    ctx.status = 200
    if own:
        await auditor.record(ctx)
    return JSONResponse({"records": [_public(r) for r in rows], "limit": limit, "offset": offset})


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "time": row["recorded_at"],
        "event_id": row["event_id"],
        "event_action": row["event_action"],
        "event_types": row["event_types"].split(),
        "outcome": row["outcome"],
        "user": row["user_id"],
        "patients": [p for p in row["patients"].split("|") if p],
        "studies": [s for s in row["studies"].split("|") if s],
        "request_id": row["request_id"],
        "hash": row["hash"],
        "prev_hash": row["prev_hash"],
        "message": row["message"],
    }
