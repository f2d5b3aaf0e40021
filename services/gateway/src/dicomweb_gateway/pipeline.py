"""The per-request pipeline every protected route runs through (ARCHITECTURE section 4).

context -> rate limit -> authenticate -> (route: resolve owner, authorize, forward, rewrite)
-> respond; audit `record(ctx)` at the end of every request, allowed or denied, and errors
turned into responses in one place (http.error_response). Other packages' routes (admin,
audit) call `guarded` too so they get the same authentication, limits and audit.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from .context import Action, RequestContext
from .errors import GatewayError, service_unavailable
from .http import audit_mark, error_response
from .observe import log_request
from .services import services_of
from .store.engines import unavailable

log = logging.getLogger("dicomweb_gateway")

Handler = Callable[[RequestContext], Awaitable[Response]]

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
