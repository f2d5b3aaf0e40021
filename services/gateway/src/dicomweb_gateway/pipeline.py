"""The per-request pipeline every protected route runs through (ARCHITECTURE section 4).

Each route declares a `Spec`: its transaction, its action, where its study comes from, and
the steps that are its own (resolve, owner, forward). `run(request, parse)` owns the order:

    parse -> authenticate (and rate limits) -> audit preflight -> resolve (pseudonymous UIDs)
    -> authorize the action -> resolve the owner and authorize on it (`StudyFrom.PATH`)
    -> forward and rewrite (the route's `forward`) -> audit `record(ctx)`

so no handler repeats it. `guarded` is the outer part (context, errors turned into responses
in one place, http.error_response, and the audit record of every request, allowed or denied).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from .context import Action, RequestContext, StudyRef
from .errors import GatewayError, service_unavailable
from .http import audit_mark, error_response
from .observe import log_request
from .services import services_of
from .store.engines import unavailable

log = logging.getLogger("dicomweb_gateway")

Handler = Callable[[RequestContext], Awaitable[Response]]
P = TypeVar("P")


class StudyFrom(Enum):
    """Where a route's study comes from, so where it is authorized."""

    PATH = "path"  # named in the URL: `owner` authorizes it, then proves the object is its own
    BODY = "body"  # named by each stored instance or in the request body: decided per study
    INDEX = "index"  # a search: the permitted set is decided in the study index
    NONE = "none"  # no study (the audit trail, the device inventory): the rules decide alone


Step = Callable[[Request, RequestContext, P], Awaitable[P]]
Owner = Callable[[Request, RequestContext, P], Awaitable[StudyRef]]
Forward = Callable[[Request, RequestContext, P], Awaitable[Response]]


@dataclass(frozen=True)
class Spec(Generic[P]):
    """One route (or one DICOMweb transaction): what `run` needs to know of it."""

    transaction: str
    action: Action
    study: StudyFrom
    forward: Forward[P]
    owner: Owner[P] | None = None  # StudyFrom.PATH: authorize the named study, return the owner
    resolve: Step[P] | None = None  # before authorization: e.g. pseudonymous UIDs to real ones
    preflight: bool = True  # the audit store must take a record before anything happens

    def __post_init__(self) -> None:
        if (self.study is StudyFrom.PATH) != (self.owner is not None):
            raise ValueError(f"{self.transaction}: a study from the path needs an owner step")


Parse = Callable[[Request], Awaitable[tuple[Spec[P], P]]]


async def run(
    request: Request,
    parse: Parse[P],
    *,
    transaction: str | None = None,
    action: Action | None = None,
) -> Response:
    """The whole pipeline for one request; `transaction`/`action` name it for the audit
    record when it is refused before `parse` says what it is."""
    ctx = new_context(request, transaction, action)

    async def steps(ctx: RequestContext) -> Response:
        spec, parsed = await parse(request)
        ctx.transaction, ctx.action = spec.transaction, spec.action
        await authenticate(request, ctx)
        services = services_of(request)
        if spec.preflight:
            # Before anything reaches the archive or a store, owner look-ups included (AO-2).
            await services.auditor.preflight()
        if spec.resolve is not None:
            parsed = await spec.resolve(request, ctx, parsed)
        await services.authorizer.check_action(ctx, spec.action)
        if spec.owner is not None:
            ctx.owner = await spec.owner(request, ctx, parsed)
        return await spec.forward(request, ctx, parsed)

    return await guarded(request, steps, ctx=ctx, authenticated=False)


AUTH_TRIED = "authentication_tried"  # ctx.extra key: credentials were checked (or refused)


def new_context(request: Request, transaction: str | None, action: Action | None) -> RequestContext:
    client = request.client
    return RequestContext(
        request_id=uuid.uuid4().hex,
        method=request.method,
        path=request.url.path,
        client_ip=client.host if client else "",
        query=request.url.query,
        transaction=transaction,
        action=action,
    )


def public_url(request: Request) -> str:
    """The URL a DPoP proof's `htu` must name: the configured origin, never the Host header."""
    settings = services_of(request).settings
    return str(settings.public_url) + request.url.path


async def authenticate(request: Request, ctx: RequestContext) -> None:
    state = services_of(request)
    ctx.extra[AUTH_TRIED] = True
    try:
        ctx.principal = await state.authenticator.authenticate(
            request.headers, request.method, public_url(request), request.url.query
        )
    except GatewayError:
        # Failed attempts count against the address (AP-3): a flood of forged tokens is 429.
        state.rate_limiter.check("ip:" + ctx.client_ip)
        raise
    state.rate_limiter.check("client:" + ctx.principal.client_id)


async def guarded(
    request: Request,
    handler: Handler,
    *,
    transaction: str | None = None,
    action: Action | None = None,
    ctx: RequestContext | None = None,
    authenticated: bool = True,
) -> Response:
    """Run `handler` for an authenticated request; always audit; errors become responses."""
    started = time.perf_counter()
    if ctx is None:
        ctx = new_context(request, transaction, action)
    auditor = services_of(request).auditor
    try:
        if authenticated:
            await authenticate(request, ctx)
        response = await handler(ctx)
        ctx.status = response.status_code
    except GatewayError as error:
        ctx.status = error.status
        ctx.error_code = error.code
        ctx.error_detail = error.detail
        ctx.security_event = error.security_event
        response = error_response(error, ctx.request_id)
    except Exception as exc:
        if unavailable(exc):
            # The policy store or replay cache cannot be reached: fail closed with 503 (AO-2).
            # Every step that needs the store runs before anything is forwarded.
            log.error(
                "database unavailable: %s",
                exc.__class__.__name__,
                extra={"fields": {"request_id": ctx.request_id}},
            )
            failure = service_unavailable("database unavailable")
        else:  # the last line of defence: nothing internal leaves (AP-6)
            log.exception("unhandled error", extra={"fields": {"request_id": ctx.request_id}})
            failure = GatewayError(500, "internal_error", "internal error", "unhandled exception")
        ctx.status, ctx.error_code = failure.status, failure.code
        ctx.error_detail = failure.detail
        response = error_response(failure, ctx.request_id)
    response.headers["x-request-id"] = ctx.request_id
    mark = audit_mark(request.scope)
    if mark is not None:
        mark.audited = True  # this request's record is written here, with its full context
    if ctx.principal is None and not ctx.extra.get(AUTH_TRIED) and ctx.status >= 400:
        # Refused before authentication (a malformed query): the record still names the
        # caller when valid credentials came with the request (VA-7).
        from .edge import identify

        ctx.principal = await identify(request.app, request.scope)
    try:
        await auditor.record(ctx)
    except GatewayError as error:
        # The auditor could not keep the record (store down since preflight): fail closed. A
        # streamed answer has not started yet, so nothing unaudited leaves.
        if response.background is not None:
            await response.background()
        ctx.status, ctx.error_code, ctx.error_detail = error.status, error.code, error.detail
        response = error_response(error, ctx.request_id)
        response.headers["x-request-id"] = ctx.request_id
    except Exception:
        # Any other failure of the notification does not change the outcome.
        log.exception("audit record failed", extra={"fields": {"request_id": ctx.request_id}})
    log_request(ctx, time.perf_counter() - started)
    return response
