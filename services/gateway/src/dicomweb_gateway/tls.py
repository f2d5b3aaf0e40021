"""TLS for the gateway's listener (NW-1): TLS 1.2+ with ECDHE and AEAD only, TLS 1.3 on.

A module of its own so uvicorn can pickle the context factory into every worker process.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import uvicorn

from .settings import Settings

# PS3.15 B.12 / BCP 195: TLS 1.2 with ECDHE and AEAD only; TLS 1.3 suites are all AEAD.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def gateway_ssl_context(
    config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext:
    """Module-level so uvicorn can pickle it into every worker process."""
    assert config.ssl_certfile
    key = str(config.ssl_keyfile) if config.ssl_keyfile else None
    context = _server_context(str(config.ssl_certfile), key)
    context.set_alpn_protocols(["http/1.1"])
    return context


def server_context(settings: Settings) -> ssl.SSLContext:
    """The same profile for the gateway's other listeners (the DIMSE front door)."""
    return _server_context(str(settings.tls.cert), str(settings.tls.key))


def _server_context(cert: str, key: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(cert, key)
    return context
