"""Findings: what each observation means, how bad it is, and which control fixes it.

One table (`CATALOGUE`) holds every finding the check can report: severity, title, the
control IDs of the zero-trust catalogue (docs: /work/shared/design/CONTROLS.md, copied in
tests/controls.yaml) and the remediation. `analyse` turns one endpoint's observations into
findings; nothing else decides a severity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .probes import Association, HttpAnswer, TlsInfo, _is_ip
from .targets import Target

SEVERITIES = ("info", "low", "medium", "high", "critical")


def rank(severity: str) -> int:
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Kind:
    severity: str
    title: str
    controls: tuple[str, ...]
    remediation: str


CATALOGUE: dict[str, Kind] = {
    # --- DICOM --------------------------------------------------------------------------------
    "dicom-unregistered-ae-accepted": Kind(
        "critical",
        "DICOM association accepted from an unregistered AE title",
        ("DV-1",),
        "Accept associations only from registered AE titles, each bound to a pinned client "
        "certificate and address (the gateway's DIMSE front door); turn off promiscuous "
        "echo/store (Orthanc: DicomAlwaysAllowEcho/Store false, DicomCheckCalledAet true).",
    ),
    "dicom-plaintext-accepted": Kind(
        "high",
        "DICOM association accepted without TLS",
        ("DV-2", "NW-1"),
        "Require DICOM TLS (PS3.15 B.12) with client certificates; put devices that cannot "
        "speak TLS behind the TLS bridge in their own segment (docs/exposure.md).",
    ),
    "dicom-tls-without-client-certificate": Kind(
        "high",
        "DICOM TLS association accepted without a client certificate",
        ("DV-2", "DV-1"),
        "Require and pin client certificates (Orthanc: DicomTlsRemoteCertificateRequired; "
        "the gateway's door pins one certificate per device).",
    ),
    "dicom-any-called-ae": Kind(
        "medium",
        "DICOM listener accepts a blank or default called AE title",
        ("DV-1",),
        "Check the called AE title (Orthanc: DicomCheckCalledAet true).",
    ),
    "dicom-plaintext-listener": Kind(
        "medium",
        "Plain DICOM listener reachable (our AE titles were refused)",
        ("DV-2", "NW-3"),
        "AE titles are not secrets: close the plain port or restrict it to the one legacy "
        "device's address behind the TLS bridge.",
    ),
    # --- HTTP ---------------------------------------------------------------------------------
    "dicomweb-open": Kind(
        "critical",
        "DICOMweb answers without credentials",
        ("ID-1", "AP-1", "NW-3"),
        "Put the archive behind the gateway (tokens, per-study policy, audit); the archive "
        "itself must refuse everyone but the gateway (client certificate + password, loopback).",
    ),
    "wado-open": Kind(
        "high",
        "WADO-URI answers without credentials",
        ("ID-1", "AP-1", "NW-3"),
        "As for DICOMweb: only the gateway may reach the archive's WADO endpoint.",
    ),
    "console-open": Kind(
        "high",
        "Archive console or REST API answers without credentials",
        ("NW-3", "AP-2"),
        "Enable authentication, refuse remote access, and expose only the gateway's "
        "allow-listed DICOMweb routes (AP-2).",
    ),
    "default-credentials": Kind(
        "critical",
        "Default credentials accepted",
        ("ID-1", "NW-3"),
        "Remove default users; the archive's only user is the gateway's, with a random secret "
        "from a file (the production profile refuses placeholders), plus a client certificate.",
    ),
    "http-plaintext": Kind(
        "high",
        "HTTP without TLS serves content",
        ("NW-2", "NW-1"),
        "Serve HTTPS only; a plain-HTTP port may only redirect with an empty body (NW-2).",
    ),
    "http-redirect-only": Kind(
        "info", "Plain HTTP only redirects to HTTPS, with no content", ("NW-2",), "None."
    ),
    "hsts-missing": Kind(
        "medium",
        "HTTPS responses carry no Strict-Transport-Security",
        ("NW-2",),
        "Send Strict-Transport-Security: max-age=31536000 (at least one year) on every answer.",
    ),
    "hsts-short": Kind(
        "low",
        "Strict-Transport-Security shorter than one year",
        ("NW-2",),
        "Raise max-age to at least 31536000.",
    ),
    "server-banner": Kind(
        "low",
        "Server header names the product",
        ("AP-6",),
        "Drop or neutralise the Server header (the gateway never forwards the archive's).",
    ),
    "http-credentials-required": Kind(
        "info", "HTTP(S) endpoints ask for credentials", ("ID-1",), "None."
    ),
    # --- TLS ----------------------------------------------------------------------------------
    "tls-legacy-protocol": Kind(
        "high",
        "TLS 1.0 or 1.1 accepted",
        ("NW-1",),
        "Refuse TLS 1.0/1.1 (BCP 195, PS3.15 B.12): minimum TLS 1.2 (Orthanc: "
        "SslMinimumProtocolVersion 4).",
    ),
    "tls-weak-suites": Kind(
        "medium",
        "TLS 1.2 suites other than ECDHE with AEAD accepted",
        ("NW-1",),
        "Offer only ECDHE-ECDSA/RSA with AES-GCM or ChaCha20-Poly1305 on TLS 1.2.",
    ),
    "tls13-missing": Kind(
        "low", "TLS 1.3 not offered", ("NW-1",), "Enable TLS 1.3 (preferred by NW-1)."
    ),
    "tls-certificate-expired": Kind(
        "high",
        "Certificate expired or not yet valid",
        ("NW-1", "AO-1"),
        "Renew it; short-lived certificates from the deployment CA renew themselves (AO-1).",
    ),
    "tls-certificate-expiring": Kind(
        "medium",
        "Long-lived certificate expires within 14 days",
        ("NW-1", "AO-1"),
        "Renew it, and prefer short-lived certificates rotated automatically (AO-1).",
    ),
    "tls-certificate-untrusted": Kind(
        "low",
        "Certificate does not chain to the given CA (or the system store)",
        ("NW-1",),
        "Issue it from the deployment CA, or pass that CA with --ca.",
    ),
    "tls-certificate-name": Kind(
        "low",
        "Certificate does not name the host scanned",
        ("NW-1",),
        "Add the name clients use to the certificate's subjectAltName.",
    ),
    "tls-client-certificate-required": Kind(
        "info",
        "TLS port requires a client certificate",
        ("NW-3",),
        "None: only holders of a trusted client certificate get further.",
    ),
    "tls-ok": Kind("info", "TLS configuration", ("NW-1",), "None."),
    # --- generic ------------------------------------------------------------------------------
    "unidentified-service": Kind(
        "low",
        "Open port with an unidentified service",
        ("NW-3",),
        "Close what does not need to be reachable from this network.",
    ),
    "scan-incomplete": Kind(
        "medium",
        "Scan incomplete (connection budget spent)",
        (),
        "Raise --max-connections or scan fewer endpoints at once.",
    ),
}


@dataclass
class Finding:
    endpoint: str
    id: str
    severity: str
    title: str
    detail: str
    controls: tuple[str, ...]
    remediation: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def finding(endpoint: str, kind_id: str, detail: str, severity: str | None = None) -> Finding:
    kind = CATALOGUE[kind_id]
    return Finding(
        endpoint,
        kind_id,
        severity or kind.severity,
        kind.title,
        detail,
        kind.controls,
        kind.remediation,
    )


@dataclass
class Endpoint:
    target: Target
    state: str = "closed"  # open | closed | filtered
    service: str = ""  # https | http | dicom | dicom-tls | tls | unknown
    tls: TlsInfo | None = None
    http: list[HttpAnswer] = field(default_factory=list)
    dicom: list[Association] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    note: str = ""

    @property
    def worst(self) -> str:
        if not self.findings:
            return "info"
        return max((f.severity for f in self.findings), key=rank)


def _is_ecdhe_aead(suite: str) -> bool:
    return suite.startswith("ECDHE-") and ("GCM" in suite or "CHACHA20" in suite)


def analyse_tls(ep: Endpoint) -> list[Finding]:
    tls, label = ep.tls, ep.target.label
    if tls is None:
        return []
    out: list[Finding] = []
    old = [v for v in ("TLSv1.0", "TLSv1.1") if tls.versions.get(v)]
    if old:
        out.append(finding(label, "tls-legacy-protocol", f"accepted: {', '.join(old)}"))
    weak = [s for s in tls.tls12_suites if not _is_ecdhe_aead(s)]
    if weak:
        shown = ", ".join(weak[:8]) + (f" and {len(weak) - 8} more" if len(weak) > 8 else "")
        out.append(finding(label, "tls-weak-suites", shown))
    if not tls.versions.get("TLSv1.3"):
        out.append(finding(label, "tls13-missing", "TLS 1.3 handshake refused"))
    if tls.client_certificate_required:
        out.append(
            finding(
                label,
                "tls-client-certificate-required",
                "handshake refused without a trusted client certificate",
            )
        )
    cert = tls.certificate
    if cert is not None:
        if cert.days_left < 0:
            out.append(finding(label, "tls-certificate-expired", f"not after {cert.not_after}"))
        elif cert.days_left < 14 and cert.lifetime_days > 30:
            out.append(
                finding(
                    label,
                    "tls-certificate-expiring",
                    f"{cert.days_left} days left of {cert.lifetime_days}",
                )
            )
        if cert.chain_verified is False:
            out.append(finding(label, "tls-certificate-untrusted", cert.chain_error))
        if cert.names_target is False:
            # By address, a scanner cannot know the name clients use: informational.
            by_ip = _is_ip(ep.target.name)
            out.append(
                finding(
                    label,
                    "tls-certificate-name",
                    ", ".join(cert.names) or "no SAN",
                    severity="info" if by_ip else None,
                )
            )
    versions = ", ".join(v for v, ok in tls.versions.items() if ok) or "none without a certificate"
    summary = f"versions {versions}"
    if tls.tls13_suite:
        summary += f"; TLS 1.3 suite {tls.tls13_suite}"
    if tls.tls12_suites:
        summary += f"; TLS 1.2 suites {', '.join(tls.tls12_suites)}"
    if cert is not None:
        summary += f"; certificate {cert.subject} by {cert.issuer}, {cert.days_left} days left"
    out.append(finding(label, "tls-ok", summary))
    return out


def shown(path: str) -> str:
    """A probe path as reports show it (the WADO probe's made-up UIDs are noise)."""
    return path if len(path) <= 40 else path.split("&", 1)[0] + "&..."


def _opened(answer: HttpAnswer) -> bool:
    """Answered with content without asking for credentials."""
    return answer.status is not None and 200 <= answer.status < 300


def analyse_http(ep: Endpoint, tls: bool) -> list[Finding]:
    label = ep.target.label
    out: list[Finding] = []
    plain = [a for a in ep.http if not a.credentials]
    creds = [a for a in ep.http if a.credentials]
    # An endpoint that never asks for credentials and looks WADO objects up (400/404 for our
    # made-up UIDs) serves WADO-URI to anyone; one that challenges elsewhere proves nothing here.
    challenges = any(a.status in (401, 403) for a in plain)
    for a in plain:
        wado_lookup = a.path.startswith("/wado") and a.status in (400, 404) and not challenges
        if not _opened(a) and not wado_lookup:
            continue
        if "studies" in a.path:
            out.append(finding(label, "dicomweb-open", f"GET {shown(a.path)} -> {a.status}"))
        elif a.path.startswith("/wado"):
            out.append(finding(label, "wado-open", f"GET {shown(a.path)} -> {a.status}"))
        else:
            out.append(finding(label, "console-open", f"GET {shown(a.path)} -> {a.status}"))
    for a in creds:
        if a.status is not None and 200 <= a.status < 300:
            out.append(
                finding(
                    label,
                    "default-credentials",
                    f"GET {shown(a.path)} as {a.credentials} -> {a.status}",
                )
            )
    answered = [a for a in plain if a.status is not None]
    if not tls and answered:
        redirect_only = all(
            300 <= (a.status or 0) < 400 and a.location.startswith("https://") and a.body_bytes == 0
            for a in answered
        )
        if redirect_only:
            out.append(finding(label, "http-redirect-only", answered[0].location))
        else:
            out.append(finding(label, "http-plaintext", f"{len(answered)} answers over plain HTTP"))
    if tls and answered:
        missing = [shown(a.path) for a in answered if a.hsts is None]
        if missing:
            out.append(finding(label, "hsts-missing", ", ".join(missing[:4])))
        else:
            ages = [_max_age(a.hsts or "") for a in answered]
            if min(ages) < 31536000:
                out.append(finding(label, "hsts-short", f"max-age={min(ages)}"))
    banners = sorted({a.server for a in answered if a.server})
    if banners:
        out.append(finding(label, "server-banner", ", ".join(banners)))
    challenged = sorted({f"{shown(a.path)} ({a.status})" for a in plain if a.status in (401, 403)})
    if challenged:
        out.append(finding(label, "http-credentials-required", ", ".join(challenged)))
    return out


def _max_age(header: str) -> int:
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name.lower() == "max-age" and value.strip().strip('"').isdigit():
            return int(value.strip().strip('"'))
    return 0


def analyse_dicom(
    ep: Endpoint, registered_calling: set[str], configured_called: set[str]
) -> list[Finding]:
    label = ep.target.label
    out: list[Finding] = []
    accepted = [a for a in ep.dicom if a.outcome == "accepted"]
    answered = [a for a in ep.dicom if a.outcome in ("accepted", "rejected")]

    def show(a: Association) -> str:
        echo = "" if a.echo_status is None else f", C-ECHO status 0x{a.echo_status:04X}"
        return f"{a.calling} -> {a.called} over {a.transport}{echo}"

    unregistered = [a for a in accepted if a.calling not in registered_calling]
    if unregistered:
        out.append(
            finding(
                label,
                "dicom-unregistered-ae-accepted",
                "; ".join(show(a) for a in unregistered[:4]),
            )
        )
    plain = [a for a in accepted if a.transport == "plain"]
    if plain:
        out.append(
            finding(label, "dicom-plaintext-accepted", "; ".join(show(a) for a in plain[:4]))
        )
    tls_no_cert = [a for a in accepted if a.transport == "tls"]
    if tls_no_cert:
        out.append(
            finding(
                label,
                "dicom-tls-without-client-certificate",
                "; ".join(show(a) for a in tls_no_cert[:4]),
            )
        )
    # One accepted title is the listener's own; several (or a blank one) mean it checks none.
    titles = {a.called for a in accepted}
    wild = [a for a in accepted if a.called not in configured_called]
    if wild and (len(titles) > 1 or "(blank)" in titles):
        out.append(
            finding(
                label,
                "dicom-any-called-ae",
                "accepted called AE titles: " + ", ".join(sorted({a.called for a in wild})),
            )
        )
    if answered and not accepted and any(a.transport == "plain" for a in answered):
        out.append(
            finding(
                label,
                "dicom-plaintext-listener",
                f"{len(answered)} associations answered, all rejected",
            )
        )
    return out
