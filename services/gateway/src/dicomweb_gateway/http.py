"""The HTTP edge: the one place a `GatewayError` becomes a response, and the security headers.

Error bodies carry a code and public text only (STYLE rule 4, AP-6); the private detail goes to
the log and the audit record. Every response gets HSTS and nosniff (NW-2); API responses also
get `no-store` and a CSP that forbids framing (the viewer sets its own CSP).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import SecurityEvent
from .errors import GatewayError

HSTS = "max-age=63072000; includeSubDomains"  # two years; RFC 6797, NW-2 needs >= 1 year
API_CSP = "default-src 'none'; frame-ancestors 'none'"

_ALWAYS: list[tuple[bytes, bytes]] = [
    (b"strict-transport-security", HSTS.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
_API_DEFAULTS: list[tuple[bytes, bytes]] = [
    (b"cache-control", b"no-store"),
    (b"content-security-policy", API_CSP.encode()),
    (b"x-frame-options", b"DENY"),
]
_NEVER = frozenset({b"server", b"x-powered-by"})


SCOPE_KEY = "zt.audit"


@dataclass
class AuditMark:
    """Per-request note in the ASGI scope: recorded yet, and why a refusal happened."""

    audited: bool = False
    code: str | None = None
    detail: str | None = None
    security_event: SecurityEvent | None = None
    request_id: str | None = None  # of the record written by the audit middleware


def audit_mark(scope: Scope) -> AuditMark | None:
    mark = scope.get(SCOPE_KEY)
    return mark if isinstance(mark, AuditMark) else None


def note_refusal(
    scope: Scope, code: str, detail: str, security_event: SecurityEvent | None = None
) -> None:
    """Tell the audit why a request that no pipeline recorded was refused."""
    mark = audit_mark(scope)
    if mark is not None and mark.code is None:
        mark.code, mark.detail, mark.security_event = code, detail, security_event


def error_response(error: GatewayError, request_id: str | None = None) -> Response:
    body = {"error": error.code, "message": error.public}
    if request_id:
        body["request_id"] = request_id
    headers = dict(error.headers)
    return Response(
        json.dumps(body).encode(),
        status_code=error.status,
        headers=headers,
        media_type="application/json",
    )


class SecurityHeaders:
    """Pure ASGI middleware (no per-request task overhead) that sets the security headers.

    The viewer's own headers (a CSP with script hashes) are kept; anything without a CSP is an
    API answer and gets the strict defaults. `Server` never leaves.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k not in _NEVER]
                present = {k for k, _ in headers}
                headers += [h for h in _ALWAYS if h[0] not in present]
                if b"content-security-policy" not in present:
                    headers += [h for h in _API_DEFAULTS if h[0] not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# API prefixes: a case variant or a path with empty/dot segments under them is never served
# (by the viewer's SPA fallback or anything else): 404 (AP-2).
# The one list: the path guard, the audit middleware (edge.py) and the viewer (viewer.py) read it.
API_PREFIXES = ("/dicom-web", "/wado", "/admin", "/audit", "/.well-known")
# The service endpoints at the root (app.py); the viewer never answers them either.
SERVICE_ROUTES = ("/healthz", "/readyz", "/metrics")
_NOT_FOUND = b'{"error": "not_found", "message": "not found"}'


def irregular_path(path: str, native_roots: frozenset[str] = frozenset()) -> bool:
    """Paths never served: archive-native roots (`archive.native_roots()`: every product's REST
    roots an attacker may try, always 404 even where the viewer would answer with its index
    page, AP-2), case variants of the API, dot/empty segments."""
    lowered = path.lower()
    if lowered.split("/", 2)[1] in native_roots:
        return True
    if "//" in path or "\\" in path or "\0" in path:
        return True
    segments = path.split("/")
    if any(s in (".", "..") for s in segments):
        return True
    for prefix in API_PREFIXES:
        if lowered.startswith(prefix) and not path.startswith(prefix):
            return True
    return False


class PathGuard:
    """Refuse irregular paths before any route sees them (pure ASGI, no per-request task)."""

    def __init__(self, app: ASGIApp, native_roots: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.native_roots = native_roots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and irregular_path(scope.get("path", "/"), self.native_roots):
            # Recorded like any other refusal by the audit middleware around this one (VA-7).
            note_refusal(scope, "not_found", "archive-native or irregular path")
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_NOT_FOUND)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _NOT_FOUND})
            return
        await self.app(scope, receive, send)
