"""The stack description (stack.json) and the IdP's discovery document."""

from __future__ import annotations

import json
import ssl
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx

Stack = dict[str, Any]


def load_stack(stack: Stack | str | Path) -> Stack:
    if isinstance(stack, dict):
        return stack
    data: Stack = json.loads(Path(stack).read_text())
    return data


@lru_cache(maxsize=8)
def _ssl_context(ca_cert: str) -> ssl.SSLContext:
    # The deployment CA is the only trust anchor (never the system store, never verify=False).
    return ssl.create_default_context(cafile=ca_cert)


def http_client(stack: Stack) -> httpx.Client:
    return httpx.Client(verify=_ssl_context(stack["ca_cert"]), timeout=30.0, follow_redirects=False)


_discovery: dict[str, dict[str, Any]] = {}


def discovery(stack: Stack) -> dict[str, Any]:
    issuer = stack["idp_issuer"]
    if issuer not in _discovery:
        with http_client(stack) as client:
            r = client.get(f"{issuer}/.well-known/openid-configuration")
            r.raise_for_status()
            _discovery[issuer] = r.json()
    return _discovery[issuer]


def demo_credentials(stack: Stack) -> dict[str, Any]:
    """Users and clients as the launcher put them in stack.json, else the IdP's own file."""
    if stack.get("users") and stack.get("clients"):
        return {"users": stack["users"], "clients": stack["clients"]}
    path = Path(stack["run_dir"]) / "idp" / "data" / "demo-credentials.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data
