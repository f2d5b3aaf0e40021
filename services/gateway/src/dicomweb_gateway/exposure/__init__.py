"""`dicomweb-gateway exposure`: "How can I tell if my system is exposed?" (issue 18).

Given an explicit list of endpoints (never a range wider than a /24, rate-limited, a bounded
number of connections), it asks each one what an attacker on that network would ask:
- does it speak TLS, which versions and suites, with which certificate, and does it demand a
  client certificate;
- does it answer HTTP: DICOMweb and WADO without credentials, product consoles and REST roots,
  default credentials, HSTS;
- does it answer DICOM: an A-ASSOCIATE with Verification under blank, default and configured
  AE titles, in plain TCP or TLS, and a C-ECHO when accepted.
Each finding has a severity and a remediation tied to control IDs (`findings.CATALOGUE`). The
report is Markdown, JSON and a terminal table; the exit code says whether anything at or
above `--fail-on` was found (CI).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import report
from .findings import (
    SEVERITIES,
    Endpoint,
    analyse_dicom,
    analyse_http,
    analyse_tls,
    finding,
    rank,
)
from .probes import (
    BLANK,
    TIMEOUT,
    Throwaway,
    associate,
    client_context,
    detect_tls,
    http_probes,
    speaks_http,
    tls_details,
)
from .targets import Budget, RateLimiter, Target, TargetError, parse_targets

__all__ = ["Options", "main", "scan"]

DEFAULT_CALLED = ["ANY-SCP", "ORTHANC", "DCM4CHEE"]
PROBE_CALLING = "ZTEXPOSURE"  # an AE title no deployment registers


@dataclass
class Options:
    called: list[str] = field(default_factory=list)  # configured called AE titles
    calling: list[str] = field(default_factory=list)  # registered calling AE titles
    ca_file: str | None = None
    rate: float = 20.0
    max_connections: int = 4000
    suites: bool = True


def tcp_state(target: Target, limiter: RateLimiter) -> str:
    limiter.acquire()
    try:
        socket.create_connection((target.address, target.port), timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        return "closed"
    except TimeoutError:
        return "filtered"
    except OSError:
        return "closed"
    return "open"


def dicom_probes(ep: Endpoint, opts: Options, limiter: RateLimiter, tls: bool) -> None:
    ctx = client_context() if tls else None
    # A valid request first: whoever answers it speaks DICOM; blank titles (which some
    # toolkits refuse silently) come last.
    called_titles = [*DEFAULT_CALLED, *opts.called, BLANK]
    for called in dict.fromkeys(called_titles):
        result = associate(ep.target, called, PROBE_CALLING, limiter, ctx)
        ep.dicom.append(result)
        if len(ep.dicom) == 1 and result.outcome in ("refused", "error"):
            return  # not DICOM (or not to us): no more attempts
    accepted = [a.called for a in ep.dicom if a.outcome == "accepted"]
    target_called = next((c for c in accepted if c in opts.called), None)
    target_called = target_called or (opts.called[0] if opts.called else None)
    target_called = target_called or (accepted[0] if accepted else "ANY-SCP")
    for calling in dict.fromkeys([*opts.calling, BLANK]):
        ep.dicom.append(associate(ep.target, target_called, calling, limiter, ctx))


def scan_endpoint(
    target: Target, opts: Options, limiter: RateLimiter, throwaway: Throwaway
) -> Endpoint:
    ep = Endpoint(target)
    ep.state = tcp_state(target, limiter)
    if ep.state != "open":
        return ep
    first = detect_tls(target, limiter, throwaway)
    if first is not None:
        ep.tls = tls_details(target, first, limiter, throwaway, opts.ca_file, opts.suites)
        if first.client_auth:
            ep.service = "tls"
            ep.note = (
                "TLS with a required client certificate: nothing above TLS is reachable "
                "without one. One A-ASSOCIATE without a certificate was tried."
            )
            ep.dicom.append(
                associate(
                    target,
                    opts.called[0] if opts.called else "ANY-SCP",
                    PROBE_CALLING,
                    limiter,
                    client_context(),
                )
            )
        elif speaks_http(target, limiter, tls=True) is not None:
            ep.service = "https"
            ep.http = http_probes(target, limiter, tls=True)
        else:
            dicom_probes(ep, opts, limiter, tls=True)
            answered = any(a.outcome in ("accepted", "rejected") for a in ep.dicom)
            ep.service = "dicom-tls" if answered else "tls"
    elif speaks_http(target, limiter, tls=False) is not None:
        ep.service = "http"
        ep.http = http_probes(target, limiter, tls=False)
    else:
        dicom_probes(ep, opts, limiter, tls=False)
        answered = any(a.outcome in ("accepted", "rejected") for a in ep.dicom)
        ep.service = "dicom" if answered else "unknown"
    return ep


def analyse(ep: Endpoint, opts: Options) -> None:
    ep.findings = analyse_tls(ep)
    if ep.service in ("http", "https"):
        ep.findings += analyse_http(ep, tls=ep.service == "https")
    ep.findings += analyse_dicom(ep, set(opts.calling), set(opts.called))
    if ep.service == "unknown":
        ep.findings.append(
            finding(
                ep.target.label, "unidentified-service", "TCP open; no TLS, HTTP or DICOM answer"
            )
        )


def scan(targets: list[Target], opts: Options) -> tuple[list[Endpoint], RateLimiter]:
    limiter = RateLimiter(opts.rate, opts.max_connections)
    throwaway = Throwaway()
    endpoints: list[Endpoint] = []
    try:
        for target in targets:
            try:
                ep = scan_endpoint(target, opts, limiter, throwaway)
            except Budget as exc:
                ep = Endpoint(target, state="open", note=str(exc))
                ep.findings.append(finding(target.label, "scan-incomplete", str(exc)))
                endpoints.append(ep)
                break
            analyse(ep, opts)
            endpoints.append(ep)
    finally:
        throwaway.close()
    return endpoints, limiter


def _configured_titles(config: str) -> tuple[list[str], list[str]]:
    """(called, calling) AE titles a deployment's settings name."""
    from ..settings import load_settings

    settings = load_settings(config)
    if settings.dimse is None:
        return [], []
    called = [settings.dimse.ae_title]
    calling = [d.ae_title.strip() for d in settings.dimse.devices]
    for legacy in settings.dimse.legacy:
        called.append(legacy.bridge_ae_title)
        calling.append(legacy.ae_title.strip())
    return called, calling


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dicomweb-gateway exposure",
        description="Check which DICOM, DICOMweb and TLS endpoints are exposed (docs/exposure.md).",
    )
    p.add_argument(
        "--targets",
        default="",
        help="comma-separated HOST:PORT list (HOST may be a network no wider than /24)",
    )
    p.add_argument("--target", action="append", default=[], help="one more HOST:PORT")
    p.add_argument("--targets-file", help="a file with one HOST:PORT per line")
    p.add_argument("--config", help="gateway settings: adds the configured AE titles")
    p.add_argument("--called-ae", action="append", default=[], help="a configured called AE")
    p.add_argument(
        "--calling-ae",
        action="append",
        default=[],
        help="a registered calling AE title (accepted ones are not 'unregistered')",
    )
    p.add_argument("--ca", help="CA certificate the endpoints' certificates should chain to")
    p.add_argument("--rate", type=float, default=20.0, help="new connections per second (20)")
    p.add_argument("--max-connections", type=int, default=4000, help="budget of one run (4000)")
    p.add_argument("--no-suites", action="store_true", help="skip enumerating TLS 1.2 suites")
    p.add_argument("--json", help="write the JSON report here")
    p.add_argument("--markdown", help="write the Markdown report here")
    p.add_argument(
        "--fail-on",
        choices=SEVERITIES,
        default="medium",
        help="exit 1 when a finding is at least this severe (medium)",
    )
    p.add_argument("--colour", "--color", choices=["auto", "always", "never"], default="auto")
    p.add_argument("--quiet", action="store_true", help="no terminal table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    specs = [s for s in args.targets.split(",") if s.strip()] + args.target
    if args.targets_file:
        lines = Path(args.targets_file).read_text(encoding="utf-8").splitlines()
        specs += [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]
    if not 0 < args.rate <= 200:
        print("exposure: --rate must be between 0 and 200 connections per second", file=sys.stderr)
        return 2
    try:
        targets = parse_targets(specs)
    except TargetError as exc:
        print(f"exposure: {exc}", file=sys.stderr)
        return 2
    called, calling = list(args.called_ae), list(args.calling_ae)
    if args.config:
        from ..settings import SettingsError

        try:
            more_called, more_calling = _configured_titles(args.config)
        except SettingsError as exc:
            print(f"exposure: {exc}", file=sys.stderr)
            return 2
        called += more_called
        calling += more_calling
    opts = Options(
        called=list(dict.fromkeys(called)),
        calling=list(dict.fromkeys(calling)),
        ca_file=args.ca,
        rate=args.rate,
        max_connections=args.max_connections,
        suites=not args.no_suites,
    )
    warnings.simplefilter("ignore", ResourceWarning)  # pynetdicom leaves refused sockets to GC
    started = dt.datetime.now(dt.UTC)
    endpoints, limiter = scan(targets, opts)
    meta = {
        "tool": "dicomweb-gateway exposure",
        "generated_at": started.isoformat(timespec="seconds"),
        "source": socket.gethostname(),
        "targets": [t.label for t in targets],
        "rate": opts.rate,
        "connections": limiter.used,
        "called_ae_titles": opts.called,
        "registered_calling_ae_titles": opts.calling,
        "fail_on": args.fail_on,
    }
    if args.json:
        Path(args.json).write_text(report.dumps(meta, endpoints), encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(report.markdown(meta, endpoints), encoding="utf-8")
    if not args.quiet:
        colour = args.colour == "always" or (
            args.colour == "auto" and sys.stdout.isatty() and "NO_COLOR" not in os.environ
        )
        sys.stdout.write(report.table(endpoints, colour))
    failing = [f for f in report.all_findings(endpoints) if rank(f.severity) >= rank(args.fail_on)]
    return 1 if failing else 0
