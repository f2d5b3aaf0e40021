"""The HTTP edge: the one place a `GatewayError` becomes a response, and the security headers.

Error bodies carry a code and public text only (STYLE rule 4, AP-6); the private detail goes to
the log and the audit record. Every response gets HSTS and nosniff (NW-2); API responses also
get `no-store` and a CSP that forbids framing (the viewer sets its own CSP).
"""

from __future__ import annotations

import json

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
