"""The security statement (`docs/security-statement.md`), generated from the running stack.

`python -m dicomweb_gateway security-statement --config <run>/gateway/settings.yaml
--stack <run>/stack.json [--controls reports/zero-trust.json] [--output FILE]`

It follows the security section of a DICOM Conformance Statement (PS3.2, "Security": security
profiles, association-level and application-level security) and says what procurement and
auditors ask: the TLS versions and cipher suites actually offered on each port (probed now,
BCP 195 / RFC 9325), user identity and authorization (OIDC, RFC 9068, DPoP, scopes, MFA levels,
step-up), the audit trail (PS3.15 A.5, transport, hash chain), the DIMSE security profile,
de-identification, and the control catalogue with its current status.
`tests/test_security_statement.py` checks it against the running stack.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .settings import Settings, load_settings

VERSIONS = (
    ("TLS 1.0", ssl.TLSVersion.TLSv1),
    ("TLS 1.1", ssl.TLSVersion.TLSv1_1),
    ("TLS 1.2", ssl.TLSVersion.TLSv1_2),
    ("TLS 1.3", ssl.TLSVersion.TLSv1_3),
)
REPO = Path(__file__).resolve().parents[4]


@dataclass
class PortReport:
    name: str
    host: str
    port: int
    purpose: str
    versions: dict[str, bool] = field(default_factory=dict)
    tls12_suites: list[str] = field(default_factory=list)
    tls13_suite: str = ""
    client_cert_required: bool | None = None
    plaintext: bool = False
    closed: bool = False


Cert = tuple[str, str] | None


def _context(
    version: ssl.TLSVersion | None, ciphers: str | None = None, cert: Cert = None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a probe: what is offered, not whom to trust
    if version is not None:
        with warnings.catch_warnings():  # the probe offers deprecated versions on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = version
    # Old versions and suites must be offerable for the probe to see a server refuse them.
    ctx.set_ciphers(ciphers or "ALL:@SECLEVEL=0")
    return ctx


def _handshake(host: str, port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket | None:
    try:
        raw = socket.create_connection((host, port), timeout=3)
    except OSError:
        return None
    try:
        tls = ctx.wrap_socket(raw, server_hostname=host)
    except (ssl.SSLError, OSError):
        raw.close()
        return None
    return tls


def probe(host: str, port: int, certs: tuple[Cert, ...] = ()) -> PortReport:
    """What the port offers. A port that requires a client certificate is probed with the
    first of `certs` it accepts (the deployment's own), so its versions and suites show."""
    report = PortReport("", host, port, "")
    cert: Cert = None
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        report.closed = True
        return report
    tls = _handshake(host, port, _context(ssl.TLSVersion.TLSv1_3))
    if tls is None:
        tls = _handshake(host, port, _context(ssl.TLSVersion.TLSv1_2))
    if tls is not None:
        report.client_cert_required = _needs_certificate(tls)
    else:
        report.client_cert_required = True if certs else None
    if report.client_cert_required:
        for candidate in certs:
            tls = _handshake(host, port, _context(ssl.TLSVersion.TLSv1_2, cert=candidate))
            tls = tls or _handshake(host, port, _context(ssl.TLSVersion.TLSv1_3, cert=candidate))
            if tls is not None and not _needs_certificate(tls):
                cert = candidate
                break
    for name, version in VERSIONS:
        try:
            ctx = _context(version, cert=cert)
        except (ssl.SSLError, ValueError):
            report.versions[name] = False
            continue
        tls = _handshake(host, port, ctx)
        report.versions[name] = tls is not None
        if tls is not None:
            if name == "TLS 1.3":
                report.tls13_suite = (tls.cipher() or ("",))[0]
            tls.close()
    if report.versions.get("TLS 1.2"):
        candidates = sorted(
            {c["name"] for c in _context(None).get_ciphers() if c["protocol"] == "TLSv1.2"}
        )
        for suite in candidates:
            try:
                ctx = _context(ssl.TLSVersion.TLSv1_2, suite, cert)
            except ssl.SSLError:
                continue
            tls = _handshake(host, port, ctx)
            if tls is not None:
                report.tls12_suites.append(suite)
                tls.close()
    if not any(report.versions.values()):
        report.client_cert_required = None
        report.plaintext = _answers_plain_http(host, port)
    return report


def _needs_certificate(tls: ssl.SSLSocket) -> bool:
    """After a handshake without a client certificate: does the server refuse to go on?
    (TLS 1.3 sends its `certificate_required` alert after the client's Finished.)"""
    tls.settimeout(1.5)
    try:
        tls.recv(1)
    except TimeoutError:
        return False  # waiting for our request: the handshake was accepted
    except ssl.SSLError as exc:
        return "CERTIFICATE" in str(exc).upper() or "HANDSHAKE" in str(exc).upper()
    except OSError:
        return True
    finally:
        tls.close()
    return False


def _answers_plain_http(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/")
    except OSError:
        return False


def _endpoint(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or (443 if parts.scheme == "https" else 80)


def ports_of(stack: dict[str, Any]) -> list[PortReport]:
    entries = [
        ("gateway", *_endpoint(stack["gateway_url"]), "DICOMweb, WADO-URI, viewer, admin, audit"),
        ("gateway-http", *_endpoint(stack["gateway_http_url"]), "redirect to HTTPS only (301)"),
        ("idp", *_endpoint(stack["idp_issuer"]), "OpenID Provider (OIDC, OAuth 2)"),
        ("archive-http", *_endpoint(stack["archive"]["http_url"]), "archive REST/DICOMweb"),
        (
            "archive-dicom",
            stack["archive"]["dicom_host"],
            int(stack["archive"]["dicom_port"]),
            "archive DIMSE (DICOM reaches the archive through the front door, as STOW-RS)",
        ),
    ]
    if stack.get("emr_url"):  # issue 19: a client application of the demo, not a door
        entries.append(("emr", *_endpoint(stack["emr_url"]), "EMR simulator (web app)"))
    if stack.get("dimse"):
        entries.append(
            (
                "dimse-front-door",
                stack["dimse"]["host"],
                int(stack["dimse"]["port"]),
                "DIMSE front door (C-ECHO, C-STORE)",
            )
        )
    archive = stack["archive"]
    certs: tuple[Cert, ...] = ((archive["gateway_client_cert"], archive["gateway_client_key"]),)
    for device in (stack.get("dimse") or {}).get("registered_aets", {}).values():
        certs += ((device["cert"], device["key"]),)
    reports = []
    for name, host, port, purpose in entries:
        report = probe(host, port, certs)
        report.name, report.purpose = name, purpose
        reports.append(report)
    return reports


# ---------------------------------------------------------------- rendering


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]


def _yes(value: bool | None) -> str:
    return "n/a" if value is None else "yes" if value else "no"


def render(
    settings: Settings,
    stack: dict[str, Any],
    ports: list[PortReport],
    controls: dict[str, Any] | None,
) -> str:
    policy = yaml.safe_load(Path(settings.policy.file).read_text(encoding="utf-8")) or {}
    catalogue = yaml.safe_load((REPO / "tests" / "controls.yaml").read_text(encoding="utf-8"))
    out = [
        "# Security statement",
        "",
        "<!-- Generated by `python -m dicomweb_gateway security-statement --config "
        "<run>/gateway/settings.yaml --stack <run>/stack.json --controls "
        "reports/zero-trust.json --output docs/security-statement.md` from a running stack; "
        "tests/test_security_statement.py checks it against the stack it runs. Ports are those "
        "of the run that generated it. -->",
        "",
        "The security section of the DICOM Conformance Statement (PS3.2) of this deployment: "
        "the gateway (`dicomweb_gateway`), its OpenID Provider, the archive (Orthanc 1.10.1 + "
        "DICOMweb plugin 1.7) and the DIMSE front door. Every value below was read from the "
        "running configuration or probed on the running ports when this file was generated.",
        "",
        "## 1. Security profiles",
        "",
        "- **BCP 195 TLS Secure Transport Connection Profile** (PS3.15 B.12; RFC 9325) on every "
        "port the stack owns: TLS 1.2 with ECDHE and AEAD suites only, TLS 1.3; TLS 1.0/1.1 "
        "refused (section 2, probed).",
        "- **Audit Trail Message Format Profile** (PS3.15 A.5) for every request (section 4).",
        "- **Basic TLS / BCP 195 profile for DIMSE** with mutual authentication (section 5).",
        "- **Attribute Confidentiality Profiles** (PS3.15 Annex E): not supported (section 6).",
        "",
        "## 2. Association-level security: TLS offered on each port (probed)",
        "",
    ]
    rows = []
    for p in ports:
        versions = ", ".join(n for n, ok in p.versions.items() if ok) or (
            "none: plain HTTP" if p.plaintext else "closed: nothing listens" if p.closed else "none"
        )
        refused = ", ".join(n for n, ok in p.versions.items() if not ok) or "-"
        rows.append(
            [
                p.name,
                f"{p.host}:{p.port}",
                p.purpose,
                versions,
                refused,
                _yes(p.client_cert_required) if any(p.versions.values()) else "n/a",
            ]
        )
    out += _table(
        ["port", "address", "purpose", "TLS offered", "refused", "client certificate required"],
        rows,
    )
    out += ["", "TLS 1.2 cipher suites each port accepts (OpenSSL names; every other suite the "
            "probe offered was refused), and the TLS 1.3 suite negotiated:", ""]  # fmt: skip
    out += _table(
        ["port", "TLS 1.2 suites", "TLS 1.3"],
        [
            [p.name, ", ".join(p.tls12_suites) or "-", p.tls13_suite or "-"]
            for p in ports
            if any(p.versions.values())
        ],
    )
    out += [
        "",
        "- HTTPS answers carry `Strict-Transport-Security: max-age=63072000; "
        "includeSubDomains`; the plain-HTTP port only redirects (no data).",
        f"- The gateway reaches the archive at `{settings.archive.url}` with mutual TLS "
        f"(client certificate: {'yes' if settings.archive.client_cert else 'no'}) and HTTP "
        "credentials held by the gateway only; clients never see the archive (NW-3).",
        f"- The gateway trusts only `{Path(settings.oidc.ca_cert).name}` for the IdP's TLS.",
        "",
        "## 3. Application-level security: identity and authorization",
        "",
        f"- **OpenID Connect** provider `{settings.oidc.issuer}`; keys from its discovery "
        "document over TLS; unknown `kid`: refetched at most every "
        f"{settings.oidc.jwks_min_refresh_seconds} s; keys unavailable: 503, nothing forwarded.",
        "- **Access tokens (RFC 9068)**: JWS `typ` `at+jwt`, algorithms "
        f"{', '.join(settings.oidc.algorithms)} only (no HS*, no `none`), `iss` = the issuer, "
        f"`aud` = `{settings.public_url}` (RFC 8707), lifetime at most "
        f"{settings.oidc.max_token_lifetime_seconds} s, clock leeway "
        f"{settings.oidc.leeway_seconds} s; tokens in the query string refused (RFC 6750).",
        "- **DPoP (RFC 9449)** for API clients: proof algorithms "
        f"{', '.join(settings.dpop.algorithms)}, `iat` within {settings.dpop.iat_window_seconds}"
        " s, `jti` replay cache shared by every worker; a DPoP-bound token sent as Bearer: 401.",
        "- **Scopes** (SMART-style): "
        + ", ".join(
            f"`{s}`"
            for s in sorted(
                {
                    s
                    for c in stack.get("clients", {}).values()
                    for s in c.get("scopes", [])
                    if "/" in s or s.startswith("study:")
                }
            )
        )
        + ".",
        "- **Clients**: "
        + "; ".join(
            f"`{name}` ({', '.join(c.get('grant_types') or ['none'])})"
            for name, c in sorted(stack.get("clients", {}).items())
        )
        + ". Password grant and implicit flow refused; PKCE S256 required (ID-9).",
        "- **Authentication assurance levels** (`acr`, lowest first): "
        + ", ".join(f"`{a}`" for a in policy.get("acr_levels", []))
        + " (password; password + TOTP; WebAuthn, phishing resistant).",
        "- **Step-up (RFC 9470)**, from the policy:",
    ]
    for rule in policy.get("step_up", []):
        needs = f"`acr` >= `{rule.get('acr')}`"
        if rule.get("max_age"):
            needs += f", login at most {rule['max_age']} s old"
        scope = (
            f" on studies labelled {', '.join(rule['labels_any'])}"
            if rule.get("labels_any")
            else ""
        )
        out.append(f"  - `{rule['id']}`: {', '.join(rule.get('actions', []))}{scope}: {needs}.")
    out += [
        "- **Authorization**: per study, on the study that really owns the addressed object "
        f"(policy `{Path(settings.policy.file).name}`: {len(policy.get('rules', []))} rules; "
        "deny wins; labels from ingest rules; break-glass with a reason and fresh MFA). "
        "Unknown and refused studies get the same answer (no existence disclosure).",
        f"- **Resource limits**: QIDO `limit` at most {settings.limits.qido_max_limit}, STOW "
        f"bodies at most {settings.limits.stow_max_bytes} bytes, other bodies "
        f"{settings.limits.max_body_bytes} bytes, {settings.limits.requests_per_minute} requests "
        f"per minute per client; executable preambles: `{settings.limits.preamble_policy.value}`.",
        "",
        "## 4. Audit trail",
        "",
        "- **Messages**: PS3.15 A.5 (DICOM Audit Message schema), one per request whatever its "
        "status: Query 110112, DICOM Instances Transferred 110104 (retrieve and store), DICOM "
        "Instances Accessed 110103 (series delete), DICOM Study Deleted 110105, Security Alert "
        "110113 (every 401/403, DPoP failure, preamble rejection), Emergency Override 110127, "
        "Object Security Attributes Changed 110135, Security Configuration 110129, Audit Log "
        "Used 110101. Each names the user (`sub` + issuer), client id, source address, token "
        "`jti`, patient and study participant objects.",
        f"- **Store**: `{urlsplit(settings.audit.database_url).scheme}` database, append-only, "
        "**hash-chained** (SHA-256 over the previous hash and the record): altering or "
        "deleting a record makes `python -m dicomweb_gateway.audit verify` fail. Timestamps UTC.",
        "- **Transport**: "
        + (
            f"syslog over TLS (RFC 5424/5425) to `{settings.audit.syslog.host}:"
            f"{settings.audit.syslog.port}` with a spool across outages."
            if settings.audit.syslog
            else "local store only (no syslog repository configured in this run)."
        )
        + " The audit store unavailable: requests get 503 (fail closed).",
        "",
        "## 5. DIMSE security",
        "",
    ]
    dimse = settings.dimse
    if dimse is not None:
        devices = [
            [d.name, d.ae_title, d.host, Path(str(d.certificate)).name]
            for d in getattr(dimse, "devices", [])
        ]
        out += [
            f"- **Front door** `{dimse.ae_title}` on `{dimse.host}:{dimse.port}`: DICOM TLS "
            "(BCP 195 profile) with **pinned client certificates**; the calling AE title must "
            "be the one bound to that certificate; unknown peers refused (DV-1). Every C-STORE "
            "is decided by the same per-study policy, integrity checks and audit as STOW-RS "
            "(DV-4).",
            "- **Archive DIMSE port**: see section 2 (the front door stores into the archive "
            "with STOW-RS over mutual TLS; when the archive's DICOM port listens it requires "
            "DICOM TLS with the gateway's client certificate).",
            f"- Legacy devices behind the TLS bridge: {len(getattr(dimse, 'legacy', []) or [])}.",
            "",
        ]
        out += _table(["device", "AE title", "host", "pinned certificate"], devices)
    else:
        out.append("- No DIMSE front door configured in this run.")
    out += [
        "",
        "## 6. De-identification",
        "",
        "- **De-identified views (DA-1)** for policy grants with `view: deidentified`: PS3.15 "
        "Annex E Basic Application Level Confidentiality Profile (Table E.1-1) with the Retain "
        "Longitudinal Temporal Information with Modified Dates, Retain Patient Characteristics "
        "and Clean Descriptors options (CID 7050 codes 113100, 113107, 113108, 113105), on "
        "every QIDO-RS, WADO-RS and WADO-URI answer; UIDs replaced by keyed per-project "
        "pseudonyms; instances with Burned In Annotation YES or of Secondary Capture classes "
        "refused (403). Identified callers get the stored objects unchanged.",
        "- **Not supported.** WADO-URI `anonymize` is refused (400): de-identification is a "
        "grant of the policy, never a request parameter.",
        "",
        "## 7. Control catalogue",
        "",
    ]
    status: dict[str, str] = {}
    if controls:
        for c in controls.get("controls", []):
            status[c["id"]] = f"{c.get('status', '')} ({c.get('passed', 0)} passed)"
        out.append(
            f"Status from the test report generated {controls.get('generated_at', '?')}"
            f" (full run: {controls.get('full_run')})."
        )
    else:
        out.append("No test report was given: statuses are not shown.")
    out.append("")
    out += _table(
        ["id", "control", "planned", "status"],
        [[c["id"], c["title"], c["when"], status.get(c["id"], "-")] for c in catalogue],
    )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomweb-gateway security-statement")
    parser.add_argument("--config", required=True, help="the gateway's settings.yaml")
    parser.add_argument("--stack", required=True, help="stack.json of the running stack")
    parser.add_argument("--controls", help="reports/zero-trust.json (control status)")
    parser.add_argument("--output", help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    stack = json.loads(Path(args.stack).read_text(encoding="utf-8"))
    controls = None
    if args.controls and Path(args.controls).exists():
        controls = json.loads(Path(args.controls).read_text(encoding="utf-8"))
    text = render(settings, stack, ports_of(stack), controls)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
