"""The probes: TCP, TLS (versions, suites, certificate, client authentication), HTTP, DIMSE.

Each probe opens its connections through the run's `RateLimiter`, never retries, and uses
short timeouts. The standard library does TLS (an `ssl` client that can offer TLS 1.0 to
1.3 and every suite OpenSSL knows, so a server's acceptance is the server's doing), httpx
does HTTP, pynetdicom does DIMSE. The one thing written by hand is the A-ASSOCIATE-RQ with
a blank AE title: pynetdicom (correctly, PS3.8 9.3.2) refuses to send one, and exposed
archives accept it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import socket
import ssl
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .targets import RateLimiter, Target

TIMEOUT = 3.0
VERSIONS = {
    "TLSv1.0": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
# Alerts a server sends when it got as far as checking the client's certificate: the protocol
# version and suite were acceptable.
CLIENT_AUTH_ALERTS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV1_ALERT_DECRYPT_ERROR",
    }
)
# What a plaintext service answers to a ClientHello.
NOT_TLS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_LAYER_FAILURE",
        "UNKNOWN_PROTOCOL",
    }
)


@dataclass
class Handshake:
    ok: bool  # completed, as far as the client can tell
    version: str = ""
    cipher: str = ""
    der: bytes | None = None
    reason: str = ""  # OpenSSL reason of the failure (or of the alert right after)
    client_auth: bool = False  # the server asked for / checked a client certificate

    @property
    def accepted(self) -> bool:
        """The server accepted this version and suite (maybe only up to client auth)."""
        return self.ok or self.reason in CLIENT_AUTH_ALERTS


@dataclass
class Certificate:
    subject: str
    issuer: str
    not_before: str
    not_after: str
    days_left: float
    lifetime_days: float
    self_signed: bool
    names: list[str]
    key: str
    signature_hash: str
    chain_verified: bool | None = None  # against --ca (or the system store); None: not tried
    chain_error: str = ""
    names_target: bool | None = None


@dataclass
class TlsInfo:
    versions: dict[str, bool] = field(default_factory=dict)
    tls12_suites: list[str] = field(default_factory=list)
    tls13_suite: str = ""
    client_certificate_required: bool = False
    certificate: Certificate | None = None


@dataclass
class HttpAnswer:
    path: str
    status: int | None
    error: str = ""
    server: str = ""
    location: str = ""
    www_authenticate: str = ""
    content_type: str = ""
    hsts: str | None = None
    body_bytes: int = 0
    snippet: str = ""
    credentials: str = ""  # user:password tried (default credentials), empty when none


@dataclass
class Association:
    transport: str  # plain | tls
    calling: str
    called: str
    outcome: str  # accepted | rejected | aborted | refused (TCP/TLS) | error
    detail: str = ""
    echo_status: int | None = None


# --- TLS ---------------------------------------------------------------------------------------


class Throwaway:
    """A self-signed client certificate nobody trusts: offered to learn whether a server checks
    client certificates (it then alerts `unknown CA` / `bad certificate` instead of closing)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="zt-exposure-")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zt-exposure-probe")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .sign(key, hashes.SHA256())
        )
        self.cert = Path(self._dir.name) / "probe.pem"
        self.key = Path(self._dir.name) / "probe.key"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def close(self) -> None:
        self._dir.cleanup()


def client_context(
    low: ssl.TLSVersion = ssl.TLSVersion.TLSv1,
    high: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    ciphers: str = "ALL:@SECLEVEL=0",
    client: Throwaway | None = None,
) -> ssl.SSLContext:
    """A scanner's client: verifies nothing (it looks), offers what is asked, old protocols too
    (Debian's OpenSSL policy would otherwise refuse them on the client side and prove nothing)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers(ciphers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = low
        ctx.maximum_version = high
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.__class__.__name__)
    return exc.__class__.__name__


def handshake(
    target: Target,
    ctx: ssl.SSLContext,
    limiter: RateLimiter,
    *,
    listen_after: float = 0.0,
) -> Handshake:
    """One handshake. `listen_after` > 0 also waits that long for an alert after it (TLS 1.3
    servers refuse a missing client certificate only after the client's Finished)."""
    limiter.acquire()
    server_name = None if _is_ip(target.name) else target.name
    try:
        with (
            socket.create_connection((target.address, target.port), timeout=TIMEOUT) as raw,
            ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            cipher = tls.cipher()
            result = Handshake(
                True,
                tls.version() or "",
                cipher[0] if cipher else "",
                tls.getpeercert(binary_form=True),
            )
            if listen_after > 0:
                tls.settimeout(listen_after)
                try:
                    tls.recv(1)
                except TimeoutError:
                    pass  # the server waits for a request: nothing refused
                except ssl.SSLError as exc:
                    result.reason = _reason(exc)
                    result.client_auth = result.reason in CLIENT_AUTH_ALERTS
                except OSError as exc:
                    result.reason = _reason(exc)
            return result
    except ssl.SSLError as exc:
        reason = _reason(exc)
        return Handshake(False, reason=reason, client_auth=reason in CLIENT_AUTH_ALERTS)
    except OSError as exc:
        return Handshake(False, reason=_reason(exc))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def detect_tls(target: Target, limiter: RateLimiter, throwaway: Throwaway) -> Handshake | None:
    """None when the port does not speak TLS; else the first handshake (without a client
    certificate), with `client_auth` set when the server requires one."""
    first = handshake(target, client_context(), limiter, listen_after=0.5)
    if first.ok:
        return first
    if first.reason in NOT_TLS or first.reason in (
        "ConnectionResetError",
        "UNEXPECTED_EOF_WHILE_READING",
        "TimeoutError",
        "SSLEOFError",
        "EOF occurred in violation of protocol",
    ):
        # A plaintext service (or one that hung up on a ClientHello): not TLS.
        return None
    if first.client_auth:
        return first
    # A TLS 1.2 server that requires a certificate alerts `handshake failure` without one;
    # with a certificate it does not trust it alerts about the certificate instead.
    second = handshake(target, client_context(client=throwaway), limiter)
    if second.ok or second.client_auth:
        second.client_auth = True
        return second
    return first if first.reason not in ("", "ConnectionRefusedError") else None


def tls_details(
    target: Target,
    first: Handshake,
    limiter: RateLimiter,
    throwaway: Throwaway,
    ca_file: str | None,
    enumerate_suites: bool = True,
) -> TlsInfo:
    info = TlsInfo(client_certificate_required=first.client_auth)
    client = throwaway if first.client_auth else None
    der = first.der
    for name, version in VERSIONS.items():
        result = handshake(target, client_context(version, version, client=client), limiter)
        info.versions[name] = result.accepted
        if result.ok and name == "TLSv1.3":
            info.tls13_suite = result.cipher
        if result.der and der is None:
            der = result.der
    if enumerate_suites and (info.versions.get("TLSv1.2") or info.versions.get("TLSv1.1")):
        top = ssl.TLSVersion.TLSv1_2 if info.versions.get("TLSv1.2") else ssl.TLSVersion.TLSv1_1
        everything = client_context(top, top)
        suites = sorted({c["name"] for c in everything.get_ciphers() if c["protocol"] != "TLSv1.3"})
        for suite in suites:
            ctx = client_context(top, top, f"{suite}:@SECLEVEL=0", client)
            if handshake(target, ctx, limiter).accepted:
                info.tls12_suites.append(suite)
    if der is not None:
        info.certificate = describe_certificate(der, target)
        if not first.client_auth:
            verified, error = verify_chain(target, limiter, ca_file)
            info.certificate.chain_verified, info.certificate.chain_error = verified, error
    return info


def verify_chain(target: Target, limiter: RateLimiter, ca_file: str | None) -> tuple[bool, str]:
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    ctx.check_hostname = False  # names are compared separately (an IP target has no SNI)
    result = handshake(target, ctx, limiter)
    return result.ok, "" if result.ok else result.reason


def describe_certificate(der: bytes, target: Target) -> Certificate:
    cert = x509.load_der_x509_certificate(der)
    now = dt.datetime.now(dt.UTC)
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        names += [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    public = cert.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        key = f"EC {public.curve.name}"
    else:
        key = f"{public.__class__.__name__.removesuffix('PublicKey').removeprefix('_')} "
        key += str(getattr(public, "key_size", ""))
    algorithm = cert.signature_hash_algorithm
    return Certificate(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        days_left=round((cert.not_valid_after_utc - now).total_seconds() / 86400, 1),
        lifetime_days=round(
            (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 86400, 1
        ),
        self_signed=cert.subject == cert.issuer,
        names=names,
        key=key.strip(),
        signature_hash=algorithm.name if algorithm else "",
        names_target=_names_target(names, target),
    )


def _names_target(names: list[str], target: Target) -> bool:
    if _is_ip(target.name):
        return f"IP:{ipaddress.ip_address(target.name)}" in names
    host = target.name.lower().rstrip(".")
    for entry in names:
        if not entry.startswith("DNS:"):
            continue
        pattern = entry[4:].lower()
        if pattern == host:
            return True
        wildcard = pattern.startswith("*.") and host.count(".") >= 2
        if wildcard and host.split(".", 1)[1] == pattern[2:]:
            return True
    return False


# --- HTTP --------------------------------------------------------------------------------------

# A complete WADO-URI request for an object that does not exist (random UIDs under this tool's
# root): an archive that checks credentials answers 401, an open one looks the object up.
WADO_PROBE = (
    "/wado?requestType=WADO&studyUID=1.2.826.0.1.3680043.10.1306.9.1"
    "&seriesUID=1.2.826.0.1.3680043.10.1306.9.2&objectUID=1.2.826.0.1.3680043.10.1306.9.3"
    "&contentType=application%2Fdicom"
)
DICOMWEB_PATHS = [
    "/studies",
    "/dicom-web/studies",
    "/dcm4chee-arc/aets/DCM4CHEE/rs/studies",
    WADO_PROBE,
]
CONSOLE_PATHS = [
    "/system",
    "/app/explorer.html",
    "/ui/app/",
    "/instances",
    "/dcm4chee-arc/ui2/",
    "/dcm4chee-arc/aets",
]
DEFAULT_CREDENTIALS = [("orthanc", "orthanc"), ("alice", "alicePassword"), ("admin", "admin")]


def http_get(
    base: str,
    path: str,
    limiter: RateLimiter,
    tls: bool,
    auth: tuple[str, str] | None = None,
) -> HttpAnswer:
    limiter.acquire()
    verify: Any = client_context(ssl.TLSVersion.TLSv1_2) if tls else False
    try:
        with (
            httpx.Client(verify=verify, timeout=TIMEOUT, follow_redirects=False) as client,
            client.stream("GET", base + path, auth=auth) as r,
        ):
            body = b""
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) >= 4096:
                    break
    except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
        return HttpAnswer(path, None, error=exc.__class__.__name__)
    text = body[:160].decode("utf-8", "replace")
    return HttpAnswer(
        path,
        r.status_code,
        server=r.headers.get("server", ""),
        location=r.headers.get("location", ""),
        www_authenticate=r.headers.get("www-authenticate", ""),
        content_type=r.headers.get("content-type", ""),
        hsts=r.headers.get("strict-transport-security"),
        body_bytes=len(body),
        snippet="".join(c if c.isprintable() else " " for c in text),
        credentials=f"{auth[0]}:{auth[1]}" if auth else "",
    )


def speaks_http(target: Target, limiter: RateLimiter, tls: bool) -> HttpAnswer | None:
    answer = http_get(base_url(target, tls), "/", limiter, tls)
    return answer if answer.status is not None else None


def base_url(target: Target, tls: bool) -> str:
    host = f"[{target.address}]" if ":" in target.address else target.address
    return f"{'https' if tls else 'http'}://{host}:{target.port}"


def http_probes(target: Target, limiter: RateLimiter, tls: bool) -> list[HttpAnswer]:
    base = base_url(target, tls)
    answers = [http_get(base, p, limiter, tls) for p in DICOMWEB_PATHS + CONSOLE_PATHS]
    # Default credentials, only where a password is asked for, one path, a few well-known pairs.
    challenged = next(
        (a for a in answers if a.status == 401 and "basic" in a.www_authenticate.lower()), None
    )
    if challenged is not None:
        for pair in DEFAULT_CREDENTIALS:
            answer = http_get(base, challenged.path, limiter, tls, auth=pair)
            answers.append(answer)
            if answer.status is not None and 200 <= answer.status < 300:
                break
    return answers


# --- DIMSE -------------------------------------------------------------------------------------

BLANK = " " * 16
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1306.1"  # this tool (a private root)


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def blank_associate_rq(called: str, calling: str) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) with one Verification context; AE titles may be blank."""
    context = (
        bytes([1, 0, 0, 0]) + _item(0x30, VERIFICATION.encode()) + _item(0x40, IMPLICIT_LE.encode())
    )
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, IMPLEMENTATION_UID.encode())
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16)[:16].encode("ascii")
        + calling.ljust(16)[:16].encode("ascii")
        + bytes(32)
        + _item(0x10, APPLICATION_CONTEXT.encode())
        + _item(0x20, context)
        + _item(0x50, user)
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def raw_associate(
    target: Target,
    called: str,
    calling: str,
    limiter: RateLimiter,
    tls: ssl.SSLContext | None,
) -> Association:
    """The hand-written association for blank AE titles: accepted or not, then aborted."""
    transport = "tls" if tls else "plain"
    shown_called, shown_calling = called.strip() or "(blank)", calling.strip() or "(blank)"
    limiter.acquire()
    try:
        with socket.create_connection((target.address, target.port), timeout=TIMEOUT) as raw:
            sock: socket.socket = raw
            if tls is not None:
                sock = tls.wrap_socket(raw)
            sock.sendall(blank_associate_rq(called, calling))
            header = _recv_exact(sock, 10)
            if len(header) < 1:
                return Association(transport, shown_calling, shown_called, "aborted", "closed")
            kind = header[0]
            if kind == 0x02:
                sock.sendall(struct.pack(">BBI", 0x07, 0, 4) + bytes(4))  # A-ABORT
                return Association(transport, shown_calling, shown_called, "accepted")
            if kind == 0x03 and len(header) >= 10:
                result, source, reason = header[7], header[8], header[9]
                return Association(
                    transport,
                    shown_calling,
                    shown_called,
                    "rejected",
                    f"result {result}, source {source}, reason {reason}",
                )
            if kind == 0x07:
                return Association(transport, shown_calling, shown_called, "aborted", "A-ABORT")
            return Association(
                transport,
                shown_calling,
                shown_called,
                "error",
                f"not a DICOM answer (first byte 0x{kind:02x})",
            )
    except TimeoutError:
        return Association(transport, shown_calling, shown_called, "aborted", "no answer")
    except (ssl.SSLError, OSError) as exc:
        return Association(transport, shown_calling, shown_called, "refused", _reason(exc))


def pynetdicom_associate(
    target: Target,
    called: str,
    calling: str,
    limiter: RateLimiter,
    tls: ssl.SSLContext | None,
) -> Association:
    """An association with a Verification context; on acceptance a C-ECHO, then release."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    transport = "tls" if tls else "plain"
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.connection_timeout = TIMEOUT
    limiter.acquire()
    try:
        assoc = ae.associate(
            target.address,
            target.port,
            ae_title=called,
            tls_args=cast("tuple[ssl.SSLContext, str]", (tls, None)) if tls else None,
        )
    except (ssl.SSLError, OSError) as exc:
        return Association(transport, calling, called, "refused", _reason(exc))
    if assoc.is_established:
        status = assoc.send_c_echo()
        echo = getattr(status, "Status", None)
        assoc.release()
        return Association(transport, calling, called, "accepted", echo_status=echo)
    if assoc.is_rejected:
        return Association(transport, calling, called, "rejected", "A-ASSOCIATE-RJ")
    return Association(transport, calling, called, "aborted", "aborted or closed")


def associate(
    target: Target,
    called: str,
    calling: str,
    limiter: RateLimiter,
    tls: ssl.SSLContext | None,
) -> Association:
    if not called.strip() or not calling.strip():
        return raw_associate(target, called, calling, limiter, tls)
    return pynetdicom_associate(target, called, calling, limiter, tls)
