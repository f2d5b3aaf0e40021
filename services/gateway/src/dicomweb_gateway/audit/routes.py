"""`GET /audit`: the audit log for auditors (role `auditor`, login `urn:zt:acr:mfa` or higher).

Reading the log is itself audited (Audit Log Used, 110101); a refused read is a Security Alert
(110113). Mounted by the app factory (it includes `dicomweb_gateway.audit.routes.router`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from ..context import Action, Decision, Principal, RequestContext
from ..errors import insufficient_scope, step_up
from ..pipeline import guarded
from ..services import services_of
from .store import Filters, split_ids

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
) -> Response:
    """Audit records, oldest first, filtered; each with its A.5 XML and chain hash.

    Runs through the gateway pipeline (`guarded`): authentication, rate limits, and the record
    of this very read (110101) or of its refusal (110113)."""
    auditor = services_of(request).auditor
    filters = Filters(
        since, until, user, patient, study, outcome, event, limit=limit, offset=offset
    )

    async def handler(ctx: RequestContext) -> Response:
        await auditor.preflight()  # the read must be auditable before anything is disclosed
        assert ctx.principal is not None  # guarded() authenticated the request
        _enforce(ctx, check_auditor(ctx.principal))
        rows = await auditor.search(filters)
        records = [_public(r) for r in rows]
        return JSONResponse({"records": records, "limit": limit, "offset": offset})

    return await guarded(request, handler, transaction="audit_log_used", action=Action.AUDIT_READ)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "time": row["recorded_at"],
        "event_id": row["event_id"],
        "event_action": row["event_action"],
        "event_types": row["event_types"].split(),
        "outcome": row["outcome"],
        "user": row["user_id"],
        "patients": split_ids(row["patients"]),
        "studies": split_ids(row["studies"]),
        "request_id": row["request_id"],
        "hash": row["hash"],
        "prev_hash": row["prev_hash"],
        "message": row["message"],
    }
