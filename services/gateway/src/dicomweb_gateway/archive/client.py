"""The one pooled HTTP client to the archive, shared by every adapter (STYLE rule 7).

The archive's credentials and the gateway's client certificate are added here and nowhere else
(`_ArchiveAuth`, `archive_tls_context`); transport failures become typed gateway errors (503
when the archive cannot be reached, 504 when it is too slow), so no adapter or route sees an
httpx exception.
"""

from __future__ import annotations

import ssl
from collections.abc import Generator, Mapping
from typing import Any

import httpx

from ..errors import GatewayError, service_unavailable
from ..settings import Settings


class _ArchiveAuth(httpx.Auth):
    """HTTP Basic credentials for the archive: the only place they are added (STYLE rule 7)."""

    def __init__(self, username: str, password: str) -> None:
        self._header = httpx.BasicAuth(username, password)._auth_header

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


def archive_tls_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(settings.archive.ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.archive.client_cert and settings.archive.client_key:
        context.load_cert_chain(str(settings.archive.client_cert), str(settings.archive.client_key))
    return context


def timeout_error(detail: str) -> GatewayError:
    return GatewayError(504, "archive_timeout", "upstream timeout", detail)


def unavailable(detail: str) -> GatewayError:
    return service_unavailable(detail, retry_after=5)


def upstream_error(method: str, path: str, status: int) -> GatewayError:
    return GatewayError(
        502, "archive_error", "upstream error", f"archive {method} {path} -> {status}"
    )


class ArchiveClient:
    """One pooled `httpx.AsyncClient` for the whole worker process."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        keepalive_expiry: float = 5.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Accept-Encoding": "identity", **(headers or {})}
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            auth=_ArchiveAuth(username, password),
            verify=verify,
            transport=transport,
            # Connect fast or report the archive down; reads may take the configured time.
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
            limits=httpx.Limits(
                max_connections=64, max_keepalive_connections=32, keepalive_expiry=keepalive_expiry
            ),
            follow_redirects=False,
            trust_env=False,
        )

    @staticmethod
    def options(settings: Settings, transport: httpx.AsyncBaseTransport | None) -> dict[str, Any]:
        """Keyword arguments of every adapter's constructor, from the settings."""
        return {
            "verify": archive_tls_context(settings) if transport is None else False,
            "timeout": settings.archive.timeout_seconds,
            "transport": transport,
        }

    async def close(self) -> None:
        await self.client.aclose()

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(self._headers)
        if extra:
            headers.update(extra)
        return headers

    async def send(
        self,
        method: str,
        path: str,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        content: Any = None,
        stream: bool = True,
    ) -> httpx.Response:
        """Send one request; the caller closes the (streamed) response. Errors are typed."""
        url = httpx.URL(self.base_url + path)
        if query:
            # Raw query bytes: already validated and encoded by the adapter (no second pass).
            url = url.copy_with(query=query.encode("ascii"))
        request = self.client.build_request(
            method, url, headers=self.headers(headers), content=content
        )
        try:
            return await self.client.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                raise unavailable(f"archive connect: {exc!r}") from None
            raise timeout_error(f"archive read: {exc!r}") from None
        except httpx.TransportError as exc:
            raise unavailable(f"archive unreachable: {exc!r}") from None

    async def json(
        self,
        method: str,
        path: str,
        query: str = "",
        content: Any = None,
        accept: str = "application/json",
    ) -> Any:
        """A JSON answer; None for 404, [] for 204; other failures are 502."""
        response = await self.send(method, path, query, {"Accept": accept}, content, stream=False)
        if response.status_code == 404:
            return None
        if response.status_code == 204 or not response.content:
            return []
        if response.status_code >= 400:
            raise upstream_error(method, path, response.status_code)
        return response.json()
