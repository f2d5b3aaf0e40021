"""Networks (CONTROLS.md NW-1, NW-2, NW-3): TLS on every hop, no plaintext, archive not exposed."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

pytestmark = pytest.mark.e2e

ONE_YEAR = 31536000


# --- NW-1: protocol versions and cipher suites -------------------------------------------------


def _endpoints(stack: dict[str, Any]) -> dict[str, tuple[str, int, tuple[str, str] | None]]:
    """name -> (host, port, client certificate the server requires, if any)."""
    archive = urlsplit(stack["archive"]["http_url"])
    gateway = urlsplit(stack["gateway_url"])
    idp = urlsplit(stack["idp_issuer"])
    client = (stack["archive"]["gateway_client_cert"], stack["archive"]["gateway_client_key"])
    return {
        "gateway": ("localhost", gateway.port or 443, None),
        "idp": ("localhost", idp.port or 443, None),
        "archive": ("localhost", archive.port or 443, client),
    }


def _pin_version(ctx: ssl.SSLContext, low: ssl.TLSVersion, high: ssl.TLSVersion) -> None:
    # Python deprecates TLS 1.0/1.1 (a warning, an error in this suite); we use them on purpose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = low
        ctx.maximum_version = high


def _client_context(
    stack: dict[str, Any],
    version: ssl.TLSVersion,
    ciphers: str | None,
    client: tuple[str, str] | None,
) -> ssl.SSLContext:
    """A client that really offers the old protocol: Debian's OpenSSL policy (TLS 1.2 minimum,
    security level 2) would otherwise refuse on the client side and prove nothing."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(stack["ca_cert"])
    ctx.set_ciphers(ciphers or "ALL:@SECLEVEL=0")
    _pin_version(ctx, version, version)
    if client is not None:
        ctx.load_cert_chain(*client)
    return ctx


def _handshake(
    host: str, port: int, ctx: ssl.SSLContext
) -> tuple[str, str] | None:  # (protocol, cipher) or None when refused
    try:
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            cipher = tls.cipher()
            return (tls.version() or "", cipher[0] if cipher else "")
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return None


@pytest.fixture(scope="module")
def legacy_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A local server that accepts TLS 1.0/1.1: the positive control proving our client can
    offer those versions, so a refusal by the stack is the stack's doing."""
    from ztstack.pki import ensure_pki

    pki = ensure_pki(tmp_path_factory.mktemp("legacy-pki"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    _pin_version(ctx, ssl.TLSVersion.TLSv1, ssl.TLSVersion.MAXIMUM_SUPPORTED)
    ctx.load_cert_chain(str(pki["gateway"].cert), str(pki["gateway"].key))
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield str(pki["ca"].cert), srv.getsockname()[1]
    stop.set()
    thread.join()
    srv.close()


def _is_ecdhe_aead(cipher: str) -> bool:
    return cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)


@pytest.mark.control("NW-1")
@pytest.mark.parametrize("service", ["gateway", "idp", "archive"])
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"]
)
def test_legacy_tls_refused(
    stack: dict[str, Any],
    legacy_tls_server: tuple[str, int],
    archive_log: Any,
    service: str,
    version: ssl.TLSVersion,
) -> None:
    ca, legacy_port = legacy_tls_server
    probe = _client_context({"ca_cert": ca}, version, None, None)
    assert _handshake("localhost", legacy_port, probe) is not None, "client cannot offer it"
    host, port, client = _endpoints(stack)[service]
    mark = archive_log.mark()
    assert _handshake(host, port, _client_context(stack, version, None, client)) is None
    assert archive_log.since(mark) == []


@pytest.mark.control("NW-1")
@pytest.mark.parametrize("service", ["gateway", "idp", "archive"])
def test_tls12_only_ecdhe_aead(stack: dict[str, Any], service: str) -> None:
    host, port, client = _endpoints(stack)[service]
    # Every TLS 1.2 suite this OpenSSL can offer, one at a time.
    everything = _client_context(stack, ssl.TLSVersion.TLSv1_2, None, None)
    suites = sorted({c["name"] for c in everything.get_ciphers() if c["protocol"] != "TLSv1.3"})
    assert len(suites) > 20
    accepted = []
    for suite in suites:
        ctx = _client_context(stack, ssl.TLSVersion.TLSv1_2, f"{suite}:@SECLEVEL=0", client)
        result = _handshake(host, port, ctx)
        if result is not None:
            assert result[0] == "TLSv1.2"
            accepted.append(result[1])
    assert accepted, "no TLS 1.2 suite accepted at all"
    assert [c for c in accepted if not _is_ecdhe_aead(c)] == []


@pytest.mark.control("NW-1")
@pytest.mark.parametrize("service", ["gateway", "idp", "archive"])
def test_tls13_accepted(stack: dict[str, Any], service: str) -> None:
    host, port, client = _endpoints(stack)[service]
    ctx = ssl.create_default_context(cafile=stack["ca_cert"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if client is not None:
        ctx.load_cert_chain(*client)
    result = _handshake(host, port, ctx)
    assert result is not None
    assert result[0] == "TLSv1.3"


# --- NW-2: no plaintext -----------------------------------------------------------------------


@pytest.mark.control("NW-2")
@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
@pytest.mark.parametrize("path", ["/", "/dicom-web/studies", "/wado?requestType=WADO"])
def test_plain_http_redirects_without_data(
    stack: dict[str, Any], archive_log: Any, method: str, path: str
) -> None:
    mark = archive_log.mark()
    body = b"\0" * 128 + b"DICM" if method == "POST" else None
    r = httpx.request(
        method, stack["gateway_http_url"] + path, content=body, follow_redirects=False, timeout=10
    )
    assert r.status_code in (301, 308)
    # To the same path on the HTTPS origin; the redirector may drop the query (it carries data).
    location = r.headers["location"]
    assert location in (stack["gateway_url"] + path, stack["gateway_url"] + path.split("?")[0])
    assert r.content == b""
    assert archive_log.since(mark) == []


@pytest.mark.control("NW-2")
@pytest.mark.parametrize(
    "path",
    ["/healthz", "/dicom-web/studies", "/.well-known/oauth-protected-resource", "/no-such-path"],
)
def test_hsts_on_every_https_response(
    stack: dict[str, Any], https: httpx.Client, archive_log: Any, path: str
) -> None:
    mark = archive_log.mark()
    r = https.get(stack["gateway_url"] + path)
    hsts = r.headers.get("strict-transport-security", "")
    directives = dict(([*d.strip().split("=", 1), ""])[:2] for d in hsts.split(";") if d.strip())
    assert int(directives.get("max-age", "0")) >= ONE_YEAR, hsts
    assert archive_log.since(mark) == []


# --- NW-3: the archive is not exposed ---------------------------------------------------------


PROBE = textwrap.dedent(
    """
    import json, socket, ssl, sys
    import httpx
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    a = json.loads(sys.argv[1])
    out = {}

    def https(client, auth):
        ctx = ssl.create_default_context(cafile=a["ca"])
        ctx.check_hostname = False
        if client:
            ctx.load_cert_chain(a["cert"], a["key"])
        try:
            r = httpx.get(f"https://{a['host']}:{a['http']}/system", verify=ctx, timeout=5,
                          auth=(a["user"], a["password"]) if auth else None)
            return {"status": r.status_code, "body": r.text[:200]}
        except Exception as e:
            return {"error": type(e).__name__}

    out["https_full"] = https(True, True)
    out["https_no_cert"] = https(False, True)
    # Plain HTTP to the HTTPS port: whatever comes back must not be an HTTP answer with data.
    try:
        with socket.create_connection((a["host"], a["http"]), timeout=5) as s:
            s.sendall(b"GET /system HTTP/1.0\\r\\nHost: archive\\r\\n\\r\\n")
            reply = b""
            while len(reply) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        out["http_plain"] = reply[:200].decode("latin-1")
    except OSError as e:
        out["http_plain"] = type(e).__name__

    def echo(client):
        ae = AE(ae_title="MODALITY_CT1")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 5
        ctx = ssl.create_default_context(cafile=a["ca"])
        ctx.check_hostname = False
        if client:
            ctx.load_cert_chain(a["dev_cert"], a["dev_key"])
        try:
            assoc = ae.associate(a["host"], a["dicom"], ae_title=a["aet"], tls_args=(ctx, None))
        except Exception as e:
            return {"error": type(e).__name__}
        if assoc.is_established:
            status = assoc.send_c_echo()
            assoc.release()
            return {"established": True, "status": getattr(status, "Status", None)}
        return {"established": False, "rejected": assoc.is_rejected}

    out["dicom_registered_device"] = echo(True)
    out["dicom_no_cert"] = echo(False)
    print(json.dumps(out))
    """
)


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to the host by a veth pair on a /30.

    Yields (namespace, host address, namespace address). Removed whatever happens.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("NW-3 needs root and iproute2 to create a network namespace", pytrace=False)
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"zt-nw3-{tag}", f"ztv{tag}h", f"ztv{tag}n"
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    third = next(n for n in range(200, 250) if f"10.231.{n}." not in used)
    host_ip, ns_ip = f"10.231.{third}.1", f"10.231.{third}.2"
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", ns)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.mark.control("NW-3")
def test_archive_refuses_other_addresses(
    stack: dict[str, Any], archive_log: Any, netns: tuple[str, str, str]
) -> None:
    ns, host_ip, ns_ip = netns
    archive = stack["archive"]
    device = stack["dimse"]["registered_aets"]["MODALITY_CT1"]
    args = {
        "host": host_ip,
        "http": urlsplit(archive["http_url"]).port,
        "dicom": archive["dicom_port"],
        "aet": archive["aet"],
        "ca": stack["ca_cert"],
        # Even everything the gateway holds does not help from another address.
        "cert": archive["gateway_client_cert"],
        "key": archive["gateway_client_key"],
        "user": archive["username"],
        "password": Path(archive["password_file"]).read_text(encoding="utf-8").strip(),
        "dev_cert": device["cert"],
        "dev_key": device["key"],
    }
    mark = archive_log.mark()
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # HTTP: with the gateway's certificate and password, a non-loopback peer is refused (401,
    # RemoteAccessAllowed false); without
    # the certificate the TLS handshake fails.
    assert out["https_full"].get("status") in (401, 403), out
    assert "ZT-P00" not in out["https_full"].get("body", ""), out
    assert "error" in out["https_no_cert"], out
    assert not out["http_plain"].startswith("HTTP/1.1 200"), out
    assert "ZT-P00" not in out["http_plain"] and "Orthanc" not in out["http_plain"], out
    # DICOM: the registered device's AE title and certificate from the wrong host: rejected.
    assert out["dicom_registered_device"].get("established") is not True, out
    assert out["dicom_no_cert"].get("established") is not True, out
    seen = archive_log.since(mark)
    assert [e for e in seen if e.ip == ns_ip] == []
    assert seen == []


def _archive_client(stack: dict[str, Any], cert: bool, auth: bool) -> httpx.Client:
    archive = stack["archive"]
    ctx = ssl.create_default_context(cafile=stack["ca_cert"])
    if cert:
        ctx.load_cert_chain(archive["gateway_client_cert"], archive["gateway_client_key"])
    password = Path(archive["password_file"]).read_text(encoding="utf-8").strip()
    return httpx.Client(
        base_url=archive["http_url"],
        verify=ctx,
        auth=(archive["username"], password) if auth else None,
        timeout=10,
    )


@pytest.mark.control("NW-3")
@pytest.mark.parametrize(
    ("cert", "auth", "path"),
    [
        (False, True, "/system"),
        (False, False, "/dicom-web/studies"),
        (True, False, "/system"),
        (True, False, "/dicom-web/studies"),
        (True, False, "/wado?requestType=WADO"),
        (True, False, "/instances"),
    ],
)
def test_archive_refuses_loopback_without_credentials_or_certificate(
    stack: dict[str, Any], archive_log: Any, cert: bool, auth: bool, path: str
) -> None:
    mark = archive_log.mark()
    with _archive_client(stack, cert, auth) as client:
        try:
            r = client.get(path)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            assert not cert  # the TLS layer refused the missing certificate
        else:
            assert r.status_code == 401
            assert b"ZT-P00" not in r.content
    assert archive_log.since(mark) == []


@pytest.mark.control("NW-3")
def test_archive_accepts_the_gateway_identity(stack: dict[str, Any], archive_log: Any) -> None:
    """The positive control for the refusals above: same client, with both credentials."""
    mark = archive_log.mark()
    with _archive_client(stack, True, True) as client:
        assert client.get("/system").status_code == 200
    seen = archive_log.since(mark)
    assert [(e.method, e.uri, e.username) for e in seen] == [("GET", "/system", "gateway")]
