"""The application factory: `create_app(settings)` wires the data-flow steps together.

One `Services` (services.py) carries one of each: settings, the archive adapter (one connection
pool for routes, authorizer and study index), authenticator (with the JWKS cache and the shared
DPoP replay cache), authorizer, auditor, rate limiter and URL rewriter. It is the only thing on
`app.state`.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import dicomweb
from .archive import native_roots, open_archive
from .audit import Auditor
from .authenticate import Authenticator
from .authorize import Authorizer
from .edge import AuditEveryRequest, BodyLimit, SafeErrors
from .errors import GatewayError, not_found
from .http import PathGuard, SecurityHeaders, error_response, note_refusal
from .observe import REGISTRY
from .parse import method_not_allowed
from .policy.scopes import OPERATION_SCOPES
from .ratelimit import RateLimiter
from .replay import SqlReplayCache, make_engine
from .rewrite import UrlRewriter
from .search import StudyAnswers
from .services import AuditorPort, AuthorizerPort, Services, services_of
from .settings import Settings, load_settings
from .store.engines import pool_of

log = logging.getLogger("dicomweb_gateway")

SETTINGS_ENV = "DICOMWEB_GATEWAY_SETTINGS"

SCOPES_SUPPORTED = list(OPERATION_SCOPES)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def create_app(
    settings: Settings,
    *,
    archive_transport: httpx.AsyncBaseTransport | None = None,
    idp_transport: httpx.AsyncBaseTransport | None = None,
    authorizer: AuthorizerPort | None = None,
    auditor: AuditorPort | None = None,
) -> FastAPI:
    """Build the gateway. Transports and hooks are injectable for unit tests."""
    workers = max(1, settings.workers)
    replay = SqlReplayCache(make_engine(settings.database_url, pool_of(settings)))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await replay.setup()
        for hook in (services.authorizer, services.auditor):
            start = getattr(hook, "start", None)
            if callable(start):
                await _maybe_await(start())
        try:
            yield
        finally:
            for hook in (services.authorizer, services.auditor):
                close = getattr(hook, "close", None)
                if callable(close):
                    await _maybe_await(close())
            await services.archive.close()
            await services.authenticator.close()
            await replay.close()

    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        title="dicomweb-gateway",
    )
    archive = open_archive(settings, archive_transport)
    services = Services(
        settings=settings,
        archive=archive,
        authenticator=Authenticator.from_settings(settings, replay, idp_transport),
        authorizer=(
            authorizer if authorizer is not None else Authorizer.from_settings(settings, archive)
        ),
        auditor=auditor if auditor is not None else Auditor.from_settings(settings),
        rate_limiter=RateLimiter(settings.limits.requests_per_minute / workers),
        rewriter=UrlRewriter(*archive.url_map(settings.public_url)),
        replay=replay,
        answers=StudyAnswers(settings.archive.answer_ttl_seconds),
    )
    app.state.services = services

    _install_error_handlers(app)
    _install_service_routes(app, settings)
    dicomweb.install(app)
    if settings.edge is not None:
        from . import dataplane

        dataplane.install(app)
    _install_optional_routers(app, settings)
    # Outermost last (edge.py): headers on everything, the safe 500, one audit record per
    # request, the body cap before any route or authentication reads, then the path guard.
    app.add_middleware(PathGuard, native_roots=native_roots())
    app.add_middleware(
        BodyLimit,
        default_cap=settings.limits.max_body_bytes,
        stow_cap=settings.limits.stow_max_bytes,
    )
    app.add_middleware(AuditEveryRequest)
    app.add_middleware(SafeErrors)
    app.add_middleware(SecurityHeaders)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    # Answers given outside the pipeline: each is noted for the audit middleware, which
    # records it (VA-7).
    def refused(request: Request, error: GatewayError) -> Response:
        note_refusal(request.scope, error.code, error.detail or error.public, error.security_event)
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            return refused(request, method_not_allowed("GET"))
        if exc.status_code == 404:
            return refused(request, not_found("no such route"))
        return refused(request, GatewayError(exc.status_code, "error", "request refused"))

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return refused(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors())
        detail = f"invalid parameters: {where}"[:500]
        return refused(request, GatewayError(400, "invalid_request", "malformed request", detail))


def _install_service_routes(app: FastAPI, settings: Settings) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        state = services_of(request)
        checks: dict[str, str] = {}

        async def probe(name: str, call: Any) -> None:
            try:
                result = await _maybe_await(call())
                # A hook may answer False instead of raising.
                checks[name] = "unavailable" if result is False else "ok"
            except Exception as exc:
                log.warning("readiness", extra={"fields": {"check": name, "error": repr(exc)}})
                checks[name] = "unavailable"

        jwks = state.authenticator.jwks
        await probe("idp_keys", lambda: None if jwks.loaded else jwks.refresh())
        await probe("archive", state.archive.ping)
        await probe("database", state.replay.ping)
        for name, hook in (("policy", state.authorizer), ("audit", state.auditor)):
            ready = getattr(hook, "ready", None) or getattr(hook, "preflight", None)
            if callable(ready):
                await probe(name, ready)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/.well-known/oauth-protected-resource", include_in_schema=False)
    async def protected_resource() -> Response:
        # RFC 9728 section 2.
        return JSONResponse(
            {
                "resource": settings.public_url,
                "authorization_servers": [settings.oidc.issuer],
                "scopes_supported": SCOPES_SUPPORTED,
                "bearer_methods_supported": ["header"],
                "resource_signing_alg_values_supported": list(settings.oidc.algorithms),
                "dpop_signing_alg_values_supported": list(settings.dpop.algorithms),
                "dpop_bound_access_tokens_required": False,
                "resource_name": "DICOMweb gateway",
            }
        )


def _install_optional_routers(app: FastAPI, settings: Settings) -> None:
    """Routes owned by other packages (admin, audit trail, viewer), mounted when present."""
    import importlib

    for module_name in ("dicomweb_gateway.admin", "dicomweb_gateway.audit.routes"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        router = getattr(module, "router", None)
        if router is not None:
            app.include_router(router)
    if settings.viewer.dist_dir is not None:
        from .viewer import mount_viewer

        mount_viewer(app, settings)


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: settings path from the environment."""
    from .observe import configure_logging

    configure_logging()
    return create_app(load_settings(os.environ[SETTINGS_ENV]))
