"""Administrative API under `/admin`: study labels, break-glass grants, the device inventory.

Both go through the same policy as DICOMweb (`Action.ADMIN`, `Action.BREAK_GLASS`): the demo
policy wants the `admin` / `break-glass` role and a fresh MFA login (RFC 9470 challenges). Input
is checked before anything changes: a malformed UID, an unknown label or a short reason is 400
and the store is untouched. The audit reads `ctx.alerts` / `ctx.extra["security_event"]`:
110127 Emergency Override Started for break-glass, 110135 Object Security Attributes Changed
for a label change (DICOM PS3.15 A.5.3.11, CID 403).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .context import Action, RequestContext, StudyRef
from .errors import bad_request, not_found
from .parse import is_uid as valid_uid  # the one UID grammar (PS3.5 9.1)
from .pipeline import Forward, Spec, StudyFrom, run
from .services import AuthorizerPort, services_of
from .store import UnknownStudy

M = TypeVar("M", bound=BaseModel)

router = APIRouter(prefix="/admin", tags=["admin"])


def _authorizer(request: Request) -> AuthorizerPort:
    return services_of(request).authorizer


class LabelChangeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    add: list[str] = Field(default_factory=list, max_length=64)
    remove: list[str] = Field(default_factory=list, max_length=64)
    reason: str = Field(min_length=1, max_length=1000)


class BreakGlassRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_instance_uid: str = Field(max_length=64)
    reason: str = Field(max_length=1000)


async def _body(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) or "body" for e in exc.errors())
        raise bad_request("invalid_request", f"invalid request body: {fields}") from None


def _check_uid(uid: str) -> None:
    if not valid_uid(uid):
        raise bad_request("invalid_uid", "malformed StudyInstanceUID")


async def _study_owner(request: Request, ctx: RequestContext, uid: str) -> StudyRef:
    """The study in the path, authorized for the route's action (policy store only)."""
    assert ctx.action is not None
    await _authorizer(request).check_study(ctx, ctx.action, uid)
    return StudyRef(uid)


def _on_study(
    transaction: str, forward: Forward[str]
) -> Callable[[Request], Awaitable[tuple[Spec[str], str]]]:
    """The spec of an admin route on the study its path names (validated first: 400)."""
    spec = Spec(transaction, Action.ADMIN, StudyFrom.PATH, forward, owner=_study_owner)

    async def parse(request: Request) -> tuple[Spec[str], str]:
        uid: str = request.path_params["study_instance_uid"]
        _check_uid(uid)
        return spec, uid

    return parse


@router.get("/studies/{study_instance_uid}")
async def read_study(study_instance_uid: str, request: Request) -> Response:
    del study_instance_uid  # read by the route's parse step
    return await run(
        request,
        _on_study("admin_read_study", _read_study),
        transaction="admin_read_study",
        action=Action.ADMIN,
    )


async def _read_study(request: Request, ctx: RequestContext, study_instance_uid: str) -> Response:
    return JSONResponse(await _study_view(request, study_instance_uid, ctx))


async def _study_view(
    request: Request, study_instance_uid: str, ctx: RequestContext
) -> dict[str, Any]:
    authorizer = _authorizer(request)
    facts = await authorizer.store.study(study_instance_uid)
    ctx.add_study(StudyRef(study_instance_uid, facts.patient_id))  # the 110103 record names it
    history = await authorizer.store.label_history(study_instance_uid)
    return {
        "study_instance_uid": study_instance_uid,
        "patient_id": facts.patient_id,
        "labels": sorted(facts.labels),
        "history": [
            {
                "changed_at": h.changed_at.isoformat(),
                "changed_by": h.changed_by,
                "via": h.via,
                "added": h.added.split(),
                "removed": h.removed.split(),
                "reason": h.reason,
            }
            for h in history
        ],
    }


@router.patch("/studies/{study_instance_uid}/labels")
async def change_labels(study_instance_uid: str, request: Request) -> Response:
    del study_instance_uid  # read by the route's parse step
    return await run(
        request,
        _on_study("admin_change_labels", _change_labels_route),
        transaction="admin_change_labels",
        action=Action.ADMIN,
    )


async def _change_labels_route(
    request: Request, ctx: RequestContext, study_instance_uid: str
) -> Response:
    return JSONResponse(await _change_labels(study_instance_uid, request, ctx))


async def _change_labels(
    study_instance_uid: str, request: Request, ctx: RequestContext
) -> dict[str, Any]:
    body = await _body(request, LabelChangeRequest)
    authorizer = _authorizer(request)
    unknown = sorted(set(body.add + body.remove) - set(authorizer.policy.labels))
    if unknown:
        raise bad_request("unknown_label", "unknown label", f"unknown labels {unknown}")
    try:
        update = await authorizer.store.change_labels(
            study_instance_uid, body.add, body.remove, _who(ctx), body.reason
        )
    except UnknownStudy:
        raise not_found(f"study {study_instance_uid} not in the policy store") from None
    facts = await authorizer.store.study(study_instance_uid)
    ctx.add_study(StudyRef(study_instance_uid, facts.patient_id))
    detail = (
        f"labels of study {study_instance_uid} changed: +{sorted(update.added)} "
        f"-{sorted(update.removed)}; reason: {body.reason}"
    )
    ctx.alerts.append(("object-security-attributes-changed", detail))
    ctx.extra["security_event"] = {
        "event_type": "110135",
        "study_instance_uid": study_instance_uid,
        "added": sorted(update.added),
        "removed": sorted(update.removed),
        "reason": body.reason,
    }
    return {
        "study_instance_uid": study_instance_uid,
        "labels": sorted(update.after),
        "added": sorted(update.added),
        "removed": sorted(update.removed),
    }


_BREAK_GLASS: Spec[None] = Spec(
    "break_glass", Action.BREAK_GLASS, StudyFrom.BODY, lambda r, c, _: _grant(r, c)
)
_DEVICES: Spec[None] = Spec(
    "admin_devices", Action.ADMIN, StudyFrom.NONE, lambda r, c, _: _devices(r, c)
)


def _static(spec: Spec[None]) -> Callable[[Request], Awaitable[tuple[Spec[None], None]]]:
    async def parse(request: Request) -> tuple[Spec[None], None]:
        return spec, None

    return parse


@router.post("/break-glass", status_code=201)
async def break_glass(request: Request) -> Response:
    return await run(
        request, _static(_BREAK_GLASS), transaction="break_glass", action=Action.BREAK_GLASS
    )


async def _grant(request: Request, ctx: RequestContext) -> Response:
    body = await _body(request, BreakGlassRequest)
    _check_uid(body.study_instance_uid)
    authorizer = _authorizer(request)
    settings = authorizer.policy.break_glass
    reason = body.reason.strip()
    if len(reason) < settings.min_reason_length:
        raise bad_request(
            "invalid_request", f"reason must be at least {settings.min_reason_length} characters"
        )
    # The study is in the body: decided here, after the pipeline's audit preflight.
    await authorizer.check_study(ctx, Action.BREAK_GLASS, body.study_instance_uid)
    assert ctx.principal is not None  # check_study denies an anonymous caller
    grant = await authorizer.store.grant_break_glass(
        ctx.principal.subject,
        ctx.principal.issuer,
        body.study_instance_uid,
        reason,
        settings.duration_seconds,
        now=datetime.fromtimestamp(authorizer.clock(), UTC),
    )
    facts = await authorizer.store.study(body.study_instance_uid)
    ctx.add_study(StudyRef(body.study_instance_uid, facts.patient_id))
    expires_at = grant.expires_at.astimezone(UTC).isoformat()
    ctx.alerts.append(
        (
            "emergency-override",
            f"break-glass on study {body.study_instance_uid} until {expires_at}: {reason}",
        )
    )
    ctx.extra["security_event"] = {
        "event_type": "110127",
        "study_instance_uid": body.study_instance_uid,
        "reason": reason,
        "expires_at": expires_at,
        "grant_id": grant.id,
    }
    return JSONResponse(
        {
            "grant_id": grant.id,
            "study_instance_uid": body.study_instance_uid,
            "expires_at": expires_at,
            "expires_in": settings.duration_seconds,
        },
        status_code=201,
    )


@router.get("/devices")
async def list_devices(request: Request) -> Response:
    """The device inventory (DV-3): JSON, or an HTML page when the client accepts text/html.
    Same protection as every admin route: the admin role (the policy's `admin` rules, decided
    on the caller: StudyFrom.NONE) and a fresh MFA login."""
    return await run(request, _static(_DEVICES), transaction="admin_devices", action=Action.ADMIN)


async def _devices(request: Request, ctx: RequestContext) -> Response:
    from .devices import as_dict, html_page

    devices = [as_dict(row) for row in await _authorizer(request).store.devices()]
    if "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(html_page(devices))
    return JSONResponse({"devices": devices})


def _who(ctx: RequestContext) -> str:
    principal = ctx.principal
    return f"{principal.subject}@{principal.issuer}" if principal else "unknown"


__all__ = ["router", "valid_uid"]
