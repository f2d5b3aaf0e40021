"""The edge: nginx from Debian in front of the gateway (the native data plane, issue 13).

nginx terminates TLS (HTTP/2 for browsers) on the gateway's public port and streams bulk
DICOMweb reads (frames, rendered, bulk data, metadata, instance/series/study retrieval) from the
archive, after asking the gateway for a decision (`auth_request` to `/_zt/authz`, cached per
token and study for `decision_ttl_seconds`). Everything else goes to the gateway, which now
listens on a Unix socket in the run directory that only this nginx uses. The archive's
credentials and client certificate are used only by the internal data-plane location.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import shutil
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from .errors import StackError
from .pki import Pair, write_private
from .rundir import RunDir
from .secretfiles import ensure_secret

NGINX = "/usr/sbin/nginx"
HEADERS_MORE = Path("/usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so")
HSTS = "max-age=63072000; includeSubDomains"
DECISION_TTL_SECONDS = 10  # the bound of issue 13 / AP-8 (the Orthanc auth plugin's cap)
# Safe JSON bodies for the errors nginx itself makes (the gateway's shape, AP-6).
ERRORS = {
    400: ("invalid_request", "malformed request"),
    404: ("not_found", "not found"),
    405: ("method_not_allowed", "method not allowed"),
    408: ("timeout", "request timeout"),
    413: ("payload_too_large", "request body too large"),
    414: ("invalid_request", "request URI too long"),
    429: ("too_many_requests", "too many requests"),
    500: ("internal_error", "internal error"),
    502: ("unavailable", "service unavailable"),
    503: ("unavailable", "service unavailable"),
    504: ("timeout", "upstream timeout"),
}
GATEWAY_PROXY = """\
proxy_http_version 1.1;
proxy_set_header Connection "";
proxy_set_header Host $host;
proxy_set_header X-Forwarded-For $remote_addr;
proxy_set_header X-Forwarded-Proto https;
proxy_set_header X-Zt-Edge-Secret "";
proxy_set_header X-Zt-Original-Uri "";
proxy_set_header X-Zt-Original-Method "";
proxy_request_buffering off;
proxy_buffering off;
proxy_read_timeout 300s;
proxy_send_timeout 300s;
"""


def check_installed() -> str:
    if not Path(NGINX).exists() or not HEADERS_MORE.exists():
        raise StackError(
            "nginx or its headers-more module is not installed",
            "run `make bootstrap` (installs the Debian packages nginx-light "
            "libnginx-mod-http-headers-more-filter)",
        )
    return NGINX


def socket_path(run: RunDir) -> Path:
    return run.gateway / "gateway.sock"


def secret_file(run: RunDir) -> Path:
    """The shared secret nginx sends on decision subrequests (defence in depth: the socket is
    already reachable by nginx alone)."""
    path = run.secrets / "edge-secret"
    ensure_secret(path)
    return path


def render(
    run: RunDir,
    pki: dict[str, Pair],
    *,
    port: int,
    archive_url: str,
    archive_username: str,
    archive_password: str,
    public_url: str,
    stream_part10: bool = True,
    decision_ttl_seconds: int = DECISION_TTL_SECONDS,
    archive_timeout_seconds: int = 30,
    requests_per_second: int = 2000,
    name: str = "edge",
    socket: Path | None = None,
) -> Path:
    """Write `<run>/<name>/nginx.conf` (0600) and its side files; returns the config path."""
    d = run.root / name
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "decisions"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    errors = d / "_zt_errors"
    errors.mkdir(exist_ok=True)
    for status, (code, text) in ERRORS.items():
        (errors / f"{status}.json").write_text(json.dumps({"error": code, "message": text}))
    (d / "gateway-proxy.conf").write_text(GATEWAY_PROXY, encoding="utf-8")
    archive = urlsplit(archive_url)
    public = urlsplit(public_url)
    basic = base64.b64encode(f"{archive_username}:{archive_password}".encode()).decode()
    user = getpass.getuser()
    part10_guard = (
        ""
        if stream_part10
        else 'if ($uri ~ "/(studies|series|instances)/[0-9.]+$") {\n                return 418;\n'
        "            }"
    )
    values = {
        "RUN": str(run.root),
        "DIR": str(d),
        "SOCKET": str(socket or socket_path(run)),
        "USER": f"user {user};" if os.geteuid() == 0 else "",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "CERT": str(pki["gateway"].cert),
        "KEY": str(pki["gateway"].key),
        "CA": str(pki["ca"].cert),
        "CLIENT_CERT": str(pki["gateway-client"].cert),
        "CLIENT_KEY": str(pki["gateway-client"].key),
        "ARCHIVE_HOSTPORT": str(archive.netloc),
        "ARCHIVE_URL": archive_url.rstrip("/"),
        "ARCHIVE_AUTH": f"Basic {basic}",
        "ARCHIVE_TIMEOUT": str(archive_timeout_seconds),
        "PUBLIC_URL": public_url.rstrip("/"),
        "PUBLIC_HOSTPORT": str(public.netloc),
        "SECRET": secret_file(run).read_text(encoding="utf-8").strip(),
        "DECISION_CACHE": _decision_cache(decision_ttl_seconds),
        "RATE": str(requests_per_second),
        "BURST": str(requests_per_second * 2),
        "HSTS": HSTS,
        "PART10_GUARD": part10_guard,
    }
    text = (resources.files("ztstack") / "templates" / "nginx.conf").read_text("utf-8")
    for name, value in values.items():
        text = text.replace(f"@@{name}@@", value)
    if "@@" in text:
        raise StackError("edge: a placeholder of nginx.conf was not filled", "a bug in edge.py")
    path = d / "nginx.conf"
    write_private(path, text.encode())  # it holds the archive's credentials: 0600
    return path


def _decision_cache(ttl: int) -> str:
    """The decision cache of the data plane's subrequest; none at all when the bound is 0
    (a cache lock with nothing to cache would only make concurrent requests wait)."""
    if ttl <= 0:
        return "proxy_cache off;"
    return "\n            ".join(
        [
            "proxy_cache zt_decisions;",
            'proxy_cache_key "$http_authorization|$zt_study";',
            f"proxy_cache_valid 200 204 {ttl}s;",
            "proxy_cache_valid any 0;",
            "proxy_cache_lock on;  # concurrent first reads of a study wait for one decision",
            "proxy_cache_lock_timeout 5s;",
            "proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;",
        ]
    )


def access_log(run: RunDir) -> Path:
    return run.root / "edge" / "access.log"


def command(exe: str, config: Path) -> list[str]:
    return [exe, "-c", str(config), "-p", str(config.parent), "-e", "stderr"]


def check_config(exe: str, config: Path) -> None:
    """`nginx -t` before starting: one clear message instead of a dead process."""
    import subprocess

    done = subprocess.run(
        [*command(exe, config), "-t", "-q"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise StackError(f"edge: nginx refuses its configuration: {done.stderr.strip()}")


def clear_cache(run: RunDir) -> None:
    shutil.rmtree(run.root / "edge" / "decisions", ignore_errors=True)
