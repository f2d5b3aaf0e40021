"""TokenSet and the token endpoint exchange shared by every grant."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from dicomweb_cli import dpop


class OAuthError(Exception):
    """An RFC 6749 error answer (`error`, `error_description`) or a failed login step."""

    def __init__(self, error: str, description: str = "", status: int = 0) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


def decode_unverified(token: str) -> dict[str, Any]:
    """JWT payload without verification: for display and test assertions, never for trust."""
    payload = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return data


def decode_header(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return data


@dataclass
class TokenSet:
    access_token: str
    token_type: str
    expires_in: int
    client_id: str
    refresh_token: str | None = None
    id_token: str | None = None
    scope: str = ""
    dpop_key: dict[str, Any] | None = None
    claims: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_response(
        cls, body: dict[str, Any], client_id: str, dpop_key: dict[str, Any] | None
    ) -> TokenSet:
        access_token = body["access_token"]
        return cls(
            access_token=access_token,
            token_type=body.get("token_type", "Bearer"),
            expires_in=int(body.get("expires_in", 0)),
            client_id=client_id,
            refresh_token=body.get("refresh_token"),
            id_token=body.get("id_token"),
            scope=body.get("scope", ""),
            dpop_key=dpop_key,
            claims=decode_unverified(access_token),
        )

    def authorization(self, method: str = "GET", url: str = "") -> dict[str, str]:
        """Headers to call the gateway with this token (a DPoP proof when it is DPoP-bound)."""
        if self.dpop_key is None:
            return {"Authorization": f"Bearer {self.access_token}"}
        proof = dpop.make_proof(self.dpop_key, method, url, access_token=self.access_token)
        return {"Authorization": f"DPoP {self.access_token}", "DPoP": proof}


def token_request(
    client: httpx.Client,
    token_endpoint: str,
    form: dict[str, str],
    dpop_key: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """POST to the token endpoint; retries once with the server's DPoP nonce if it asks."""
    nonce: str | None = None
    for _ in range(2):
        headers = {}
        if dpop_key is not None:
            headers["DPoP"] = dpop.make_proof(dpop_key, "POST", token_endpoint, nonce=nonce)
        r = client.post(token_endpoint, data=form, headers=headers)
        body: dict[str, Any] = (
            r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        )
        if r.status_code == 400 and body.get("error") == "use_dpop_nonce" and nonce is None:
            nonce = r.headers.get("DPoP-Nonce")
            continue
        if r.status_code != 200:
            raise OAuthError(
                body.get("error", "server_error"), body.get("error_description", ""), r.status_code
            )
        return body
    raise OAuthError("use_dpop_nonce", "nonce retry failed", 400)
