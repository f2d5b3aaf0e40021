"""Health probes, each over TLS with the deployment CA as the only trust anchor."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx


def tls_context(ca_cert: Path, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    return ctx


def get_ok(
    url: str,
    ca_cert: Path,
    client: tuple[Path, Path] | None = None,
    auth: tuple[str, str] | None = None,
) -> bool:
    try:
        r = httpx.get(url, verify=tls_context(ca_cert, client), auth=auth, timeout=2.0)
    except (httpx.HTTPError, OSError):
        return False
    return r.status_code == 200
