"""Pure ASGI middleware around every route: safe errors, the audit of every request, body caps.

Order, outermost first (app.py): SecurityHeaders -> SafeErrors -> AuditEveryRequest ->
BodyLimit -> PathGuard -> routes. So every answer, an unhandled exception's 500 included,
carries the security headers (AP-6, NW-2); every request leaves exactly one audit record
before its answer leaves (VA-7), the path guard's 404s and the body cap's 413s included; and
no route or authentication step reads more body than the cap allows (AP-3).

A request handled by `pipeline.guarded` is recorded there, with the full context (user,
decisions, studies), and marked; `AuditEveryRequest` records every other answer: routing 404s
and 405s, parameter validation errors, the path guard, the body cap, the viewer's refusals and
errors. Exempt (no record): GET/HEAD of the health, readiness, metrics and RFC 9728 metadata
endpoints, and the viewer's own files answered with a status below 400.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import Principal, RequestContext
from .errors import GatewayError
from .http import API_PREFIXES, SCOPE_KEY, AuditMark, audit_mark, error_response, note_refusal

log = logging.getLogger("dicomweb_gateway")

# GET/HEAD of these are never recorded (polled by orchestration and monitoring, no data).
SERVICE_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/.well-known/oauth-protected-resource"}
)


_DEFAULT_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
}


def _api_path(path: str) -> bool:
    """Paths owned by the API: anything under them is always recorded, whatever the status."""
    lowered = path.lower()
    return any(lowered == p or lowered.startswith(p + "/") for p in API_PREFIXES)


def exempt(method: str, path: str, status: int) -> bool:
    if method not in ("GET", "HEAD"):
        return False
    if path in SERVICE_PATHS:
        return True
    # The viewer's files (any non-API path answered without an error).
    return status < 400 and not _api_path(path)


async def identify(app: Any, scope: Scope) -> Principal | None:
    """The caller, when the request carries valid credentials (for the record only).

    Used for requests refused before their route authenticated them; the same checks as
    authentication (token and, for DPoP, the proof). Never raises, never changes the answer.
    """
    headers = Headers(scope=scope)
    if not headers.get("authorization"):
        return None
    services = getattr(getattr(app, "state", None), "services", None)
    authenticator = getattr(services, "authenticator", None)
    settings = getattr(services, "settings", None)
    if authenticator is None or settings is None:
        return None
    query = scope.get("query_string", b"").decode("latin-1")
    try:
        principal = await authenticator.authenticate(
            headers,
            scope.get("method", ""),
            str(settings.public_url) + scope.get("path", ""),
            query,
        )
    except Exception:  # an invalid credential just leaves the request unattributed
        return None
    return principal if isinstance(principal, Principal) else None


class AuditEveryRequest:
    """Record every answer no pipeline recorded, before it leaves (fail closed: 503)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        mark = AuditMark()
        scope[SCOPE_KEY] = mark
        started = False
        withheld = False

        async def send_audited(message: Message) -> None:
            nonlocal started, withheld
            if withheld:
                return
            if message["type"] == "http.response.start" and not started:
                started = True
                status = int(message["status"])
                if not mark.audited and not exempt(scope["method"], scope["path"], status):
                    mark.audited = True
                    request_id, error = await self._record(scope, status, mark)
                    if error is not None:
                        # The record could not be kept: the prepared answer is withheld.
                        withheld = True
                        await _send_error(scope, receive, send, error, request_id)
                        return
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"x-request-id", request_id.encode()),
                    ]
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except Exception:
            if not started and not mark.audited:
                mark.audited = True
                mark.code, mark.detail = "internal_error", "unhandled exception"
                await self._record(scope, 500, mark)
            raise

    async def _record(
        self, scope: Scope, status: int, mark: AuditMark
    ) -> tuple[str, GatewayError | None]:
        app = scope.get("app")
        client = scope.get("client")
        ctx = RequestContext(
            request_id=uuid.uuid4().hex,
            method=scope.get("method", ""),
            path=scope.get("path", ""),
            client_ip=client[0] if client else "",
            query=scope.get("query_string", b"").decode("latin-1"),
            status=status,
            error_code=mark.code or _DEFAULT_CODES.get(status, f"http_{status}"),
            error_detail=mark.detail,
            security_event=mark.security_event,
        )
        mark.request_id = ctx.request_id
        services = getattr(getattr(app, "state", None), "services", None)
        auditor = getattr(services, "auditor", None)
        if auditor is None:
            return ctx.request_id, None
        ctx.principal = await identify(app, scope)
        try:
            await auditor.record(ctx)
        except GatewayError as error:
            return ctx.request_id, error
        except Exception:  # a broken notification does not change the answer
            log.exception("audit record failed", extra={"fields": {"request_id": ctx.request_id}})
        return ctx.request_id, None


async def _send_error(
    scope: Scope, receive: Receive, send: Send, error: GatewayError, request_id: str | None
) -> None:
    response = error_response(error, request_id)
    if request_id:
        response.headers["x-request-id"] = request_id
    await response(scope, receive, send)


class SafeErrors:
    """The last line of defence (AP-6): any exception becomes the safe JSON 500.

    Sits directly inside SecurityHeaders, so the 500 carries HSTS and nosniff; the traceback
    goes to the log only. An exception after the answer started cannot change it: it is
    logged and the server closes the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"path": scope.get("path", "")}})
            if started:
                return
            error = GatewayError(500, "internal_error", "internal error")
            mark = audit_mark(scope)  # the audit middleware recorded this 500 under that id
            await _send_error(scope, receive, send, error, mark.request_id if mark else None)


def payload_too_large(detail: str) -> GatewayError:
    return GatewayError(413, "payload_too_large", "request body too large", detail)


class BodyLimit:
    """One body cap for every route, enforced before any route or authentication reads (AP-3).

    `Content-Length` over the cap: 413 at once, nothing read. A body without one (chunked) is
    counted as it streams: the read that crosses the cap raises the 413 `GatewayError` in the
    reader (the pipeline answers it), so no more than the cap is ever buffered. STOW-RS
    (POST under /dicom-web/studies) gets `limits.stow_max_bytes`, everything else
    `limits.max_body_bytes`.
    """

    def __init__(self, app: ASGIApp, default_cap: int, stow_cap: int) -> None:
        self.app = app
        self.default_cap = default_cap
        self.stow_cap = stow_cap

    def cap_for(self, method: str, path: str) -> int:
        if method == "POST" and (
            path == "/dicom-web/studies" or path.startswith("/dicom-web/studies/")
        ):
            return self.stow_cap
        return self.default_cap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.cap_for(scope.get("method", ""), scope.get("path", ""))
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                error = GatewayError(400, "invalid_request", "malformed request", "content-length")
                note_refusal(scope, error.code, error.detail, error.security_event)
                await _send_error(scope, receive, send, error, None)
                return
            if int(declared) > cap:
                error = payload_too_large(f"content-length {declared.strip()} > {cap}")
                note_refusal(scope, error.code, error.detail, error.security_event)
                response = error_response(error)
                response.headers["connection"] = "close"  # do not read the rest
                await response(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    error = payload_too_large(f"body exceeds {cap}")
                    note_refusal(scope, error.code, error.detail, error.security_event)
                    raise error
            return message

        await self.app(scope, counted, send)
