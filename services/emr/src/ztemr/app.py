"""The EMR simulator's web app (issue 19).

- Sign-in: the same IdP as everything else (client `emr-simulator`, confidential,
  authorization code + PKCE, `private_key_jwt`, password + TOTP).
- Its patients and imaging orders: the demo data's studies (written into the config by the
  launcher; the EMR reads no archive and holds no image).
- "View images": a SMART-style launch of the OHIF viewer. The EMR sends the browser to
  `<gateway>/viewer?StudyInstanceUIDs=<uid>&launch=<uid>`; the viewer's first page load in
  that tab turns the launch context into the parameterized scope `study:<uid>` of its own
  sign-in at the IdP (single sign-on: no second password), so its token reaches that study and
  nothing else for the whole tab (docs/viewer.md, "Launch from the EMR").
- "Open in Weasis": the EMR asks the IdP (silently, `prompt=none`, same SSO session) for an
  access token with scope `user/ImagingStudy.rs study:<uid>` and builds the `weasis://` URL
  carrying it (`weasis.py`).

Pages carry no script at all (CSP `default-src 'none'`); the session cookie is `__Host-`,
Secure, HttpOnly, SameSite=Lax; sessions and pending sign-ins live in memory (bounded).
"""

from __future__ import annotations

import html
import json
import secrets
import ssl
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .oidc import Client, Pending, new_pending
from .weasis import UID, launch_url

COOKIE = "__Host-zt-emr"
SESSION_SECONDS = 8 * 3600
PENDING_SECONDS = 600
MAX_ENTRIES = 10_000  # sessions and pending sign-ins each (a bound, not a quota)
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
STYLE = b"""body{font:15px sans-serif;margin:2em;color:#111}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:6px 10px;text-align:left}a{margin-right:1em}
.token{font:12px monospace;word-break:break-all}"""


@dataclass(frozen=True)
class Config:
    public_url: str
    issuer: str
    ca_cert: str
    client_id: str
    client_key_file: str
    gateway_url: str
    orders: list[dict[str, str]]
    tls_cert: str = ""
    tls_key: str = ""
    host: str = "127.0.0.1"
    port: int = 0

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def create_app(config: Config, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    sessions: dict[str, dict[str, Any]] = {}
    pending: dict[str, Pending] = {}
    orders = {o["study_instance_uid"]: o for o in config.orders}
    holder: dict[str, Client] = {}

    key = json.loads(Path(config.client_key_file).read_text(encoding="utf-8"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        trust = ssl.create_default_context(cafile=config.ca_cert)  # the run's CA only
        http = httpx.AsyncClient(verify=trust, transport=transport, timeout=15.0)
        holder["client"] = Client(
            config.issuer,
            config.client_id,
            config.public_url + "/callback",
            config.gateway_url,
            key,
            http,
        )
        yield
        await http.aclose()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"  # never leak a launch URL
        response.headers["Cache-Control"] = "no-store"
        return response

    def page(title: str, body: str, status: int = 200) -> Response:
        doc = (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<link rel="stylesheet" href="/style.css"></head><body><h1>{title}</h1>{body}'
            "</body></html>"
        )
        return headers(HTMLResponse(doc, status_code=status))

    def user_of(request: Request) -> dict[str, Any] | None:
        sid = request.cookies.get(COOKIE, "")
        session = sessions.get(sid)
        if session is None or session["expires"] < time.time():
            sessions.pop(sid, None)
            return None
        return session

    def remember(table: dict[str, Any], key: str, value: Any) -> None:
        if len(table) >= MAX_ENTRIES:
            table.clear()  # the bound; everyone signs in again
        table[key] = value

    async def start(purpose: str, scope: str, study: str | None = None, **extra: str) -> Response:
        flow = new_pending(purpose, study)
        state = secrets.token_urlsafe(24)
        remember(pending, state, flow)
        url = await holder["client"].authorize_url(flow, state, scope, **extra)
        return headers(RedirectResponse(url, status_code=303))

    @app.get("/style.css")
    async def style() -> Response:
        return headers(Response(STYLE, media_type="text/css"))

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b"ok", media_type="text/plain")

    @app.get("/")
    async def home(request: Request) -> Response:
        user = user_of(request)
        if user is None:
            return await start("login", "openid profile", acr_values="urn:zt:acr:mfa")
        rows = "".join(
            "<tr>"
            f"<td>{html.escape(o['patient_name'])}</td><td>{html.escape(o['patient_id'])}</td>"
            f"<td>{html.escape(o['accession_number'])}</td><td>{html.escape(o['description'])}</td>"
            f"<td>{html.escape(o['modality'])}</td>"
            f'<td><a class="view" href="/launch/viewer/{html.escape(uid)}" target="_blank" '
            'rel="noopener noreferrer">View images</a>'
            f'<a class="weasis" href="/launch/weasis/{html.escape(uid)}">Open in Weasis</a></td>'
            "</tr>"
            for uid, o in orders.items()
        )
        body = (
            f"<p>Signed in as <strong>{html.escape(user['name'])}</strong>. "
            '<a href="/logout">Sign out</a></p>'
            "<table><tr><th>Patient</th><th>Patient ID</th><th>Accession</th><th>Order</th>"
            f"<th>Modality</th><th>Images</th></tr>{rows}</table>"
        )
        return page("Imaging orders", body)

    @app.get("/callback")
    async def callback(request: Request) -> Response:
        state = request.query_params.get("state", "")
        flow = pending.pop(state, None)
        if flow is None or flow.created < time.time() - PENDING_SECONDS:
            return page("Sign-in failed", "<p>Unknown or expired sign-in.</p>", 400)
        if "error" in request.query_params:
            error = html.escape(request.query_params.get("error", "")[:100])
            return page("Sign-in failed", f"<p>The identity provider said: {error}.</p>", 403)
        client = holder["client"]
        try:
            tokens = await client.redeem(request.query_params.get("code", ""), flow)
            claims = await client.id_claims(str(tokens.get("id_token", "")), flow.nonce)
        except (PermissionError, ValueError, httpx.HTTPError):
            return page("Sign-in failed", "<p>The sign-in could not be completed.</p>", 403)
        if flow.purpose == "login":
            sid = secrets.token_urlsafe(32)
            name = claims.get("name") or claims.get("preferred_username") or claims["sub"]
            remember(sessions, sid, {"sub": claims["sub"], "name": str(name),
                                     "expires": time.time() + SESSION_SECONDS})  # fmt: skip
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, sid, max_age=SESSION_SECONDS, path="/", secure=True,
                                httponly=True, samesite="lax")  # fmt: skip
            return headers(response)
        user = user_of(request)
        study = flow.study or ""
        if user is None or user["sub"] != claims["sub"]:
            return page("Sign-in failed", "<p>Another user signed in meanwhile.</p>", 403)
        scopes = str(tokens.get("scope", "")).split()
        if [s for s in scopes if s.startswith("study:")] != [f"study:{study}"]:
            return page("Launch failed", "<p>The token is not narrowed to this study.</p>", 403)
        url = launch_url(config.gateway_url + "/dicom-web", study, str(tokens["access_token"]))
        expires = int(tokens.get("expires_in", 0))
        body = (
            f"<p>Study {html.escape(study)}, token valid for {expires} s and for this study only."
            f'</p><p><a id="weasis" href="{html.escape(url)}">Open in Weasis</a></p>'
            '<p><a href="/">Back to the orders</a></p>'
        )
        return page("Open in Weasis", body)

    @app.get("/launch/viewer/{study}")
    async def launch_viewer(request: Request, study: str) -> Response:
        if user_of(request) is None:
            return headers(RedirectResponse("/", status_code=303))
        if study not in orders:
            return page("Unknown order", "<p>No such imaging order.</p>", 404)
        query = urlencode({"StudyInstanceUIDs": study, "launch": study})
        return headers(RedirectResponse(f"{config.gateway_url}/viewer?{query}", status_code=303))

    @app.get("/launch/weasis/{study}")
    async def launch_weasis(request: Request, study: str) -> Response:
        if user_of(request) is None:
            return headers(RedirectResponse("/", status_code=303))
        if study not in orders or not UID.match(study):
            return page("Unknown order", "<p>No such imaging order.</p>", 404)
        scope = f"openid user/ImagingStudy.rs study:{study}"
        return await start("weasis", scope, study, prompt="none", acr_values="urn:zt:acr:mfa")

    @app.get("/logout")
    async def logout(request: Request) -> Response:
        sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = RedirectResponse("/signed-out", status_code=303)
        response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="lax")
        return headers(response)

    @app.get("/signed-out")
    async def signed_out() -> Response:
        return page("Signed out", '<p><a href="/">Sign in again</a></p>')

    return app
