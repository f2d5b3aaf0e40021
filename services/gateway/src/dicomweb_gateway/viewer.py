"""The OHIF viewer, served by the gateway at `/` (docs/viewer.md).

The files come from the pinned `@ohif/app` package (its prebuilt `dist/`); the gateway adds the
rendered `app-config.js`, the break-glass page and the security headers of
`viewer-config/security-headers.yaml`. Everything is read once at start-up: a missing or broken
file stops the gateway instead of serving a half-configured viewer (fail closed).

Routes: exact files of the dist; `index.html` for viewer routes (SPA fallback), never for the
API prefixes; `/app-config.js`; `/break-glass` and its assets under `/break-glass/`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from dicomweb_gateway import http
from dicomweb_gateway.errors import not_found
from dicomweb_gateway.settings import Settings

CLIENT_ID = "ohif-viewer"
SECURITY_HEADERS_FILE = "security-headers.yaml"
BREAK_GLASS_DIR = "break-glass"

# Paths owned by the API: an unknown path under these is a 404, never the viewer's index.html
# (a client must not mistake HTML for a DICOMweb or admin answer).
API_PREFIXES = http.API_PREFIXES + http.SERVICE_ROUTES

# Files of the OHIF package that are not part of this deployment: hosting-provider rules, the
# demo Google Cloud config, a service worker that imports Workbox from a CDN, and the legacy
# silent-refresh page that loads a script from cdnjs (renewal uses the refresh token instead).
EXCLUDED_FILES = frozenset(
    {
        "_headers",
        "_redirects",
        "serve.json",
        "google.js",
        "sw.js",
        "silent-refresh.html",
        "app-config.js",  # replaced by the rendered template
    }
)

# Content-hashed build outputs (`app.bundle.0f6159c501addfe9.js`, `0ddf166f7a343eda.wasm`): the
# name changes with the content, so the browser may keep them for a year without asking.
_HASHED_NAME = re.compile(r"(^|\.)[0-9a-f]{16,}\.[A-Za-z0-9]+$")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

_INLINE_SCRIPT = re.compile(r"<script(?P<attrs>[^>]*)>(?P<body>.*?)</script>", re.DOTALL)
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("font/woff2", ".woff2")
mimetypes.add_type("application/manifest+json", ".webmanifest")


class ViewerConfigError(Exception):
    """The viewer files or their configuration are unusable; the gateway must not start."""


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def inline_script_hashes(index_html: str) -> list[str]:
    """CSP 'sha256-...' sources for each inline <script> of OHIF's index.html (CSP3 8.4)."""
    hashes = []
    for match in _INLINE_SCRIPT.finditer(index_html):
        if "src=" in match.group("attrs"):
            continue
        digest = hashlib.sha256(match.group("body").encode("utf-8")).digest()
        hashes.append(f"'sha256-{base64.b64encode(digest).decode('ascii')}'")
    return hashes


def build_csp(
    directives: dict[str, list[str]], values: dict[str, str], extra_scripts: list[str]
) -> str:
    parts = []
    for name, sources in directives.items():
        rendered = [s.format(**values) for s in sources]
        if name == "script-src":
            rendered += extra_scripts
        parts.append(" ".join([name, *rendered]))
    return "; ".join(parts)


def render_app_config(template: str, values: dict[str, str]) -> str:
    """Fill `{{name}}` placeholders with JSON string literals (no script injection via values)."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ViewerConfigError(f"app-config template: unknown placeholder {{{{{name}}}}}")
        return json.dumps(values[name])

    return _PLACEHOLDER.sub(substitute, template)


def is_api_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in API_PREFIXES)


@dataclass(frozen=True)
class ViewerSite:
    """Everything the viewer routes serve, loaded and checked once."""

    dist_dir: Path
    break_glass_dir: Path
    index_html: bytes
    app_config_js: bytes
    break_glass_html: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, settings: Settings) -> ViewerSite:
        viewer = settings.viewer
        if viewer.dist_dir is None or viewer.config_template is None:
            raise ViewerConfigError("viewer.dist_dir and viewer.config_template are both required")
        dist_dir = viewer.dist_dir.resolve()
        config_dir = viewer.config_template.resolve().parent
        try:
            index_html = (dist_dir / "index.html").read_text(encoding="utf-8")
            template = viewer.config_template.read_text(encoding="utf-8")
            security = yaml.safe_load(
                (config_dir / SECURITY_HEADERS_FILE).read_text(encoding="utf-8")
            )
            break_glass_html = (config_dir / BREAK_GLASS_DIR / "index.html").read_bytes()
        except (OSError, yaml.YAMLError) as exc:
            raise ViewerConfigError(f"viewer files: {exc}") from None
        values = {
            "gateway_url": settings.public_url,
            "idp_issuer": settings.oidc.issuer,
            "client_id": CLIENT_ID,
            "idp_origin": origin_of(settings.oidc.issuer),
            "gateway_origin": origin_of(settings.public_url),
        }
        headers = _security_headers(security, values, inline_script_hashes(index_html))
        return cls(
            dist_dir=dist_dir,
            break_glass_dir=(config_dir / BREAK_GLASS_DIR).resolve(),
            index_html=index_html.encode("utf-8"),
            app_config_js=render_app_config(template, values).encode("utf-8"),
            break_glass_html=break_glass_html,
            headers=headers,
        )

    def _bytes(self, body: bytes, media_type: str, cache: str) -> Response:
        headers = {**self.headers, "Cache-Control": cache}
        return Response(body, media_type=media_type, headers=headers)

    def _file(self, root: Path, relative: str) -> Response | None:
        """A regular file inside `root`, or None (no traversal, no dotfiles, no exclusions)."""
        parts = PurePosixPath(relative).parts
        if not parts or any(p.startswith(".") or p in ("..", "") for p in parts):
            return None
        if root == self.dist_dir and parts[-1] in EXCLUDED_FILES and len(parts) == 1:
            return None
        try:
            candidate = (root / Path(*parts)).resolve()
            if not candidate.is_relative_to(root) or not candidate.is_file():
                return None
        except (OSError, ValueError):
            # A name the file system refuses (too long, NUL, ...) names no file: 404 (AP-6).
            return None
        cache = IMMUTABLE if _HASHED_NAME.search(candidate.name) else REVALIDATE
        media_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        headers = {**self.headers, "Cache-Control": cache}
        return FileResponse(candidate, media_type=media_type, headers=headers)

    def respond(self, path: str) -> Response:
        """The response for a GET/HEAD of `path` (already percent-decoded by the server)."""
        if is_api_path(path):
            raise not_found(f"no API route for {path}")
        if path in ("/", "/index.html"):
            return self.index()
        if path == "/app-config.js":
            return self._bytes(self.app_config_js, "text/javascript", REVALIDATE)
        if path in ("/break-glass", "/break-glass/"):
            return self._bytes(self.break_glass_html, "text/html; charset=utf-8", REVALIDATE)
        if path.lstrip("/") in EXCLUDED_FILES:
            raise not_found(f"{path} is not served")
        if path.startswith("/break-glass/"):
            found = self._file(self.break_glass_dir, path.removeprefix("/break-glass/"))
        else:
            found = self._file(self.dist_dir, path.lstrip("/"))
        if found is not None:
            return found
        # A missing file (a name with an extension) is a 404 so that a stale chunk is never
        # answered with HTML; anything else is a client-side route of the viewer.
        if "." in PurePosixPath(path).name:
            raise not_found(f"no viewer file {path}")
        return self.index()

    def index(self) -> Response:
        return self._bytes(self.index_html, "text/html; charset=utf-8", REVALIDATE)


def _security_headers(
    security: Any, values: dict[str, str], script_hashes: list[str]
) -> dict[str, str]:
    if not isinstance(security, dict):
        raise ViewerConfigError(f"{SECURITY_HEADERS_FILE}: must be a mapping")
    directives = security.get("content_security_policy")
    extra = security.get("headers", {})
    if not isinstance(directives, dict) or not isinstance(extra, dict):
        raise ViewerConfigError(
            f"{SECURITY_HEADERS_FILE}: needs content_security_policy and headers mappings"
        )
    for name, sources in directives.items():
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise ViewerConfigError(f"{SECURITY_HEADERS_FILE}: {name} must be a list of sources")
    try:
        csp = build_csp(directives, values, script_hashes)
    except (KeyError, IndexError, ValueError) as exc:
        raise ViewerConfigError(f"{SECURITY_HEADERS_FILE}: bad placeholder {exc}") from None
    headers = {str(k): str(v) for k, v in extra.items()}
    headers["Content-Security-Policy"] = csp
    return headers


def mount_viewer(app: FastAPI, settings: Settings) -> None:
    """Serve OHIF at `/`. Call last: the catch-all route must come after every API route."""
    if settings.viewer.dist_dir is None:
        return
    site = ViewerSite.load(settings)

    async def viewer(request: Request) -> Response:
        return site.respond(request.url.path)

    app.add_api_route(
        "/{path:path}",
        viewer,
        methods=["GET", "HEAD"],
        include_in_schema=False,
        name="viewer",
    )
