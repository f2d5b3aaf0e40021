"""`GET /audit`: the audit log, for whom the policy allows `audit_read` (config/policy.yaml: the
`audit-read` rule, role `auditor`, and the `mfa-for-audit-read` step-up).

Decided by the same authorizer and policy file as every other route (no rule of its own here).
Reading the log is itself audited (Audit Log Used, 110101); a refused read is a Security Alert
(110113). Mounted by the app factory (it includes `dicomweb_gateway.audit.routes.router`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from ..context import Action, RequestContext
from ..pipeline import Spec, StudyFrom, run
from ..services import services_of
from .store import Filters, split_ids

router = APIRouter()

MAX_LIMIT = 1000
TRANSACTION = "audit_log_used"


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

    Runs through the gateway pipeline (`pipeline.run`, no study: the policy's `audit_read`
    rules decide on the caller): authentication, rate limits, the audit preflight, and the
    record of this very read (110101) or of its refusal (110113)."""
    filters = Filters(
        since, until, user, patient, study, outcome, event, limit=limit, offset=offset
    )

    async def forward(request: Request, ctx: RequestContext, _: None) -> Response:
        rows = await services_of(request).auditor.search(filters)
        records = [_public(r) for r in rows]
        return JSONResponse({"records": records, "limit": limit, "offset": offset})

    spec: Spec[None] = Spec(TRANSACTION, Action.AUDIT_READ, StudyFrom.NONE, forward)

    async def parse(request: Request) -> tuple[Spec[None], None]:
        return spec, None

    return await run(request, parse, transaction=TRANSACTION, action=Action.AUDIT_READ)


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
