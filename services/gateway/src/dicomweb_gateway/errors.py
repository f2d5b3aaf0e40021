"""Typed gateway errors: a code, public text, an HTTP status and a private detail.

Only `http.py` turns an error into a response. The detail goes to logs and audit, never to the
client (STYLE rule 4; RFC 6750 section 3, RFC 9449 section 7.1, RFC 9470 section 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .context import SecurityEvent


@dataclass
class GatewayError(Exception):
    status: int
    code: str
    public: str
    detail: str = ""
    # Extra response headers such as WWW-Authenticate, Retry-After, DPoP-Nonce, Allow.
    headers: dict[str, str] = field(default_factory=dict)
    # What kind of security event this refusal is, for the audit (None: not one by itself).
    security_event: SecurityEvent | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.detail or self.public}"


def _challenge(scheme: str, params: dict[str, str]) -> str:
    if not params:
        return f'{scheme} realm="dicomweb"'
    inner = ", ".join(f'{k}="{v}"' for k, v in params.items())
    return f'{scheme} realm="dicomweb", {inner}'


def missing_credentials(dpop_algs: str | None = None) -> GatewayError:
    """RFC 6750 3.1: no credentials -> 401 with a bare challenge and no error code."""
    headers = {"WWW-Authenticate": _challenge("Bearer", {})}
    if dpop_algs:
        headers["WWW-Authenticate"] += ", " + _challenge("DPoP", {"algs": dpop_algs})
    return GatewayError(
        401,
        "unauthorized",
        "authentication required",
        headers=headers,
        security_event=SecurityEvent.AUTHENTICATION,
    )


def invalid_request(detail: str, public: str = "malformed request") -> GatewayError:
    return GatewayError(
        400,
        "invalid_request",
        public,
        detail,
        {"WWW-Authenticate": _challenge("Bearer", {"error": "invalid_request"})},
    )


def invalid_token(detail: str, scheme: str = "Bearer") -> GatewayError:
    return GatewayError(
        401,
        "invalid_token",
        "invalid access token",
        detail,
        {"WWW-Authenticate": _challenge(scheme, {"error": "invalid_token"})},
        SecurityEvent.AUTHENTICATION,
    )


def invalid_dpop_proof(detail: str, algs: str) -> GatewayError:
    return GatewayError(
        401,
        "invalid_dpop_proof",
        "invalid DPoP proof",
        detail,
        {"WWW-Authenticate": _challenge("DPoP", {"error": "invalid_dpop_proof", "algs": algs})},
        SecurityEvent.DPOP,
    )


def insufficient_scope(detail: str, scope: str = "") -> GatewayError:
    params = {"error": "insufficient_scope"}
    if scope:
        params["scope"] = scope
    return GatewayError(
        403,
        "insufficient_scope",
        "access denied",
        detail,
        {"WWW-Authenticate": _challenge("Bearer", params)},
    )


def step_up(detail: str, acr_values: str | None, max_age: int | None) -> GatewayError:
    """RFC 9470 section 3: the client must re-authenticate at a higher level or more recently."""
    params = {
        "error": "insufficient_user_authentication",
        "error_description": "a stronger or more recent authentication is required",
    }
    if acr_values:
        params["acr_values"] = acr_values
    if max_age is not None:
        params["max_age"] = str(max_age)
    return GatewayError(
        401,
        "insufficient_user_authentication",
        "stronger authentication required",
        detail,
        {"WWW-Authenticate": _challenge("Bearer", params)},
        SecurityEvent.STEP_UP,
    )


def not_found(detail: str = "") -> GatewayError:
    return GatewayError(404, "not_found", "not found", detail)


def bad_request(code: str, public: str, detail: str = "") -> GatewayError:
    return GatewayError(400, code, public, detail)


def service_unavailable(detail: str, retry_after: int = 5) -> GatewayError:
    """Fail closed (AO-2): a dependency is down; nothing was forwarded."""
    return GatewayError(
        503,
        "unavailable",
        "service temporarily unavailable",
        detail,
        {"Retry-After": str(retry_after)},
    )
