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
from ..pipeline import guarded
from ..services import services_of
from .store import Filters, split_ids

router = APIRouter()

MAX_LIMIT = 1000


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
    services = services_of(request)
    auditor = services.auditor
    filters = Filters(
        since, until, user, patient, study, outcome, event, limit=limit, offset=offset
    )

    async def handler(ctx: RequestContext) -> Response:
        await auditor.preflight()  # the read must be auditable before anything is disclosed
        await services.authorizer.check_action(ctx, Action.AUDIT_READ)
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
