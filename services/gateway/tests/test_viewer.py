"""Serving the OHIF viewer (dicomweb_gateway.viewer) from a fake dist directory."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import anyio
import httpx
import pytest
import yaml
from dicomweb_gateway import viewer
from dicomweb_gateway.errors import GatewayError
from dicomweb_gateway.settings import Settings, parse_settings
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "services/gateway/settings.example.yaml"
VIEWER_CONFIG = REPO / "viewer-config"

INLINE = 'window.PUBLIC_URL="/"'
INDEX_HTML = (
    "<!doctype html><html><head>"
    f"<script>{INLINE}</script>"
    '<script defer src="/app.bundle.0123456789abcdef.js"></script>'
    "</head><body><div id=root></div></body></html>"
)


def _settings(tmp_path: Path, dist: Path | None) -> Settings:
    text = EXAMPLE.read_text().replace("<run>", str(tmp_path / "run")).replace("<repo>", str(REPO))
    raw = yaml.safe_load(text)
    # The settings check that key/cert files exist; the viewer reads none of them.
    for section, key in [("tls", "cert"), ("tls", "key"), ("oidc", "ca_cert")]:
        _touch(Path(raw[section][key]))
    for key in ("password_file", "client_cert", "client_key", "ca_cert"):
        _touch(Path(raw["archive"][key]))
    Path(raw["archive"]["password_file"]).write_text("unit-test-archive-pass-0123456789")
    for key in ("file", "ingest_rules_file"):
        _touch(Path(raw["policy"][key]))
    raw["viewer"]["dist_dir"] = str(dist) if dist else None
    return parse_settings(raw)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


class ViewerClient:
    """Synchronous requests to an ASGI app through httpx (starlette's TestClient is deprecated)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
                return await c.get(path, params=params)

        return anyio.run(call)


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    d = tmp_path / "dist"
    (d / "assets").mkdir(parents=True)
    (d / "index.html").write_text(INDEX_HTML)
    (d / "app.bundle.0123456789abcdef.js").write_text("console.log('app')")
    (d / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (d / "app.bundle.css").write_text("body{}")
    (d / "assets" / "favicon.ico").write_bytes(b"\0")
    for name in ("app-config.js", "google.js", "sw.js", "_headers", "silent-refresh.html"):
        (d / name).write_text("// upstream file that must not be served")
    (d / ".hidden").write_text("secret")
    (tmp_path / "outside.txt").write_text("outside")
    return d


@pytest.fixture
def client(tmp_path: Path, dist: Path) -> ViewerClient:
    app = FastAPI()

    @app.exception_handler(GatewayError)
    async def _error(_: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse({"error": exc.code}, status_code=exc.status)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    viewer.mount_viewer(app, _settings(tmp_path, dist))
    return ViewerClient(app)


@pytest.mark.parametrize(
    "path",
    ["/", "/index.html", "/viewer", "/callback", "/viewer/dicomweb", "/segmentation", "/logout"],
)
def test_viewer_routes_fall_back_to_index(client: ViewerClient, path: str) -> None:
    r = client.get(path, params={"StudyInstanceUIDs": "1.2.3"})
    assert r.status_code == 200
    assert r.text == INDEX_HTML
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies/1.2.3/unknown",
        "/dicom-web",
        "/wado",
        "/admin/nothing",
        "/audit/x",
        "/.well-known/unknown",
        "/healthz/x",
        "/readyz",
        "/metrics",
    ],
)
def test_api_paths_never_get_index(client: ViewerClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert "<html" not in r.text


def test_api_routes_registered_before_win(client: ViewerClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("path", "cache"),
    [
        ("/app.bundle.0123456789abcdef.js", viewer.IMMUTABLE),
        ("/0ddf166f7a343eda.wasm", viewer.IMMUTABLE),
        ("/app.bundle.css", "no-cache"),
        ("/assets/favicon.ico", "no-cache"),
    ],
)
def test_static_files_and_caching(client: ViewerClient, path: str, cache: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["cache-control"] == cache
    assert "content-security-policy" in r.headers


def test_wasm_and_js_media_types(client: ViewerClient) -> None:
    assert client.get("/0ddf166f7a343eda.wasm").headers["content-type"] == "application/wasm"
    js = client.get("/app.bundle.0123456789abcdef.js").headers["content-type"]
    assert js.startswith("text/javascript")


@pytest.mark.parametrize(
    "path",
    [
        "/google.js",
        "/sw.js",
        "/_headers",
        "/silent-refresh.html",
        "/.hidden",
        "/missing.bundle.js",
        "/assets/missing.png",
        "/../outside.txt",
        "/%2e%2e/outside.txt",
        "/assets/..%2f..%2foutside.txt",
        "/" + "a" * 300 + ".js",  # longer than a file name may be: OSError inside (AP-6)
        "/assets/" + "b" * 5000 + ".png",
        "/a%00.js",  # NUL: ValueError inside
    ],
)
def test_excluded_missing_and_traversal_are_404(client: ViewerClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert "outside" not in r.text and "upstream file" not in r.text


def test_app_config_is_rendered(client: ViewerClient) -> None:
    r = client.get("/app-config.js")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["content-type"].startswith("text/javascript")
    body = r.text
    assert "{{" not in body
    assert "upstream file" not in body
    assert 'var GATEWAY = "https://localhost:8443";' in body
    assert 'var ISSUER = "https://localhost:9443/realms/dicomweb";' in body
    assert 'var CLIENT_ID = "ohif-viewer";' in body
    assert "response_type: 'code'" in body
    assert "https://" not in re.sub(r'"https://localhost:(8443|9443)[^"]*"', "", body)


def test_render_quotes_values() -> None:
    out = viewer.render_app_config("var a = {{x}};", {"x": '";alert(1)//'})
    assert out == 'var a = "\\";alert(1)//";'
    with pytest.raises(viewer.ViewerConfigError):
        viewer.render_app_config("{{nope}}", {})


def _csp(client: ViewerClient) -> dict[str, list[str]]:
    header = client.get("/").headers["content-security-policy"]
    directives = {}
    for part in header.split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


def test_csp_is_strict(client: ViewerClient) -> None:
    csp = _csp(client)
    assert csp["default-src"] == ["'none'"]
    assert csp["object-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    assert csp["connect-src"] == ["'self'", "https://localhost:9443"]
    scripts = csp["script-src"]
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
    digest = base64.b64encode(hashlib.sha256(INLINE.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in scripts
    for sources in csp.values():
        assert "*" not in sources and "https:" not in sources and "http:" not in sources


def test_security_headers_on_every_viewer_response(client: ViewerClient) -> None:
    for path in ("/", "/app-config.js", "/app.bundle.css", "/break-glass"):
        h = client.get(path).headers
        assert h["x-content-type-options"] == "nosniff"
        assert h["x-frame-options"] == "DENY"
        assert h["referrer-policy"] == "no-referrer"
        assert h["strict-transport-security"].startswith("max-age=31536000")


def test_break_glass_page_has_no_inline_script(client: ViewerClient) -> None:
    r = client.get("/break-glass", params={"study": "1.2.3"})
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-cache"
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", r.text, re.S)
    assert scripts and all('src="/break-glass/' in a and not body.strip() for a, body in scripts)
    assert "style=" not in r.text
    assert client.get("/break-glass/break-glass.js").status_code == 200
    assert client.get("/break-glass/../index.html").status_code in (200, 404)
    assert client.get("/break-glass/nothing.js").status_code == 404


def test_viewer_disabled(tmp_path: Path) -> None:
    app = FastAPI()
    viewer.mount_viewer(app, _settings(tmp_path, None))
    assert ViewerClient(app).get("/").status_code == 404


def test_missing_dist_fails_closed(tmp_path: Path) -> None:
    app = FastAPI()
    with pytest.raises(viewer.ViewerConfigError):
        viewer.mount_viewer(app, _settings(tmp_path, tmp_path / "nowhere"))


def test_inline_script_hashes_skip_external() -> None:
    html = '<script src="/a.js"></script><script>x()</script>'
    digest = base64.b64encode(hashlib.sha256(b"x()").digest()).decode()
    assert viewer.inline_script_hashes(html) == [f"'sha256-{digest}'"]


def test_real_template_and_headers_parse() -> None:
    # The committed files are what the gateway serves.
    assert (VIEWER_CONFIG / "app-config.template.js").is_file()
    security = yaml.safe_load((VIEWER_CONFIG / "security-headers.yaml").read_text())
    assert security["content_security_policy"]["default-src"] == ["'none'"]
