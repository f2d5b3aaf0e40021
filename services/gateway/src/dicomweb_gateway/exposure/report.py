"""The exposure report: JSON (complete), Markdown (for a ticket or an auditor), a terminal
table (colour on a TTY)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from .findings import SEVERITIES, Endpoint, Finding, rank, shown

COLOURS = {
    "info": "\033[36m",
    "low": "\033[34m",
    "medium": "\033[33m",
    "high": "\033[31m",
    "critical": "\033[1;97;41m",
}
RESET = "\033[0m"


def all_findings(endpoints: list[Endpoint]) -> list[Finding]:
    found = [f for ep in endpoints for f in ep.findings]
    return sorted(found, key=lambda f: (-rank(f.severity), f.endpoint, f.id))


def summary(endpoints: list[Endpoint]) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITIES, 0)
    for f in all_findings(endpoints):
        counts[f.severity] += 1
    return counts


def worst(endpoints: list[Endpoint]) -> str:
    found = all_findings(endpoints)
    return found[0].severity if found else "info"


def to_json(meta: dict[str, Any], endpoints: list[Endpoint]) -> dict[str, Any]:
    return {
        **meta,
        "summary": summary(endpoints),
        "worst": worst(endpoints),
        "endpoints": [
            {
                "endpoint": ep.target.label,
                "host": ep.target.name,
                "address": ep.target.address,
                "port": ep.target.port,
                "state": ep.state,
                "service": ep.service,
                "note": ep.note,
                "worst": ep.worst,
                "tls": asdict(ep.tls) if ep.tls else None,
                "http": [asdict(a) for a in ep.http],
                "dicom": [asdict(a) for a in ep.dicom],
                "findings": [f.as_dict() for f in ep.findings],
            }
            for ep in endpoints
        ],
        "findings": [f.as_dict() for f in all_findings(endpoints)],
    }


def dumps(meta: dict[str, Any], endpoints: list[Endpoint]) -> str:
    return json.dumps(to_json(meta, endpoints), indent=2) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(meta: dict[str, Any], endpoints: list[Endpoint]) -> str:
    counts = summary(endpoints)
    lines = [
        "# Exposure report",
        "",
        f"- Generated: {meta['generated_at']}",
        f"- Scanned from: {meta.get('source', '?')}",
        f"- Endpoints: {len(endpoints)} ({', '.join(ep.target.label for ep in endpoints)})",
        f"- Connections: {meta['connections']} at most {meta['rate']}/s",
        f"- Worst finding: **{worst(endpoints)}**; "
        + ", ".join(f"{n} {s}" for s, n in reversed(counts.items()) if n),
        "",
        "## Endpoints",
        "",
        "| endpoint | state | service | TLS | worst |",
        "|---|---|---|---|---|",
    ]
    for ep in endpoints:
        tls = "-"
        if ep.tls is not None:
            versions = [v for v, ok in ep.tls.versions.items() if ok]
            tls = ", ".join(versions) or "?"
            if ep.tls.client_certificate_required:
                tls += " (client certificate required)"
        lines.append(
            f"| {_cell(ep.target.label)} | {ep.state} | {ep.service or '-'} | {tls} "
            f"| {ep.worst if ep.state == 'open' else '-'} |"
        )
    lines += [
        "",
        "## Findings",
        "",
        "| severity | endpoint | finding | detail | controls | remediation |",
        "|---|---|---|---|---|---|",
    ]
    for f in all_findings(endpoints):
        lines.append(
            f"| {f.severity} | {_cell(f.endpoint)} | {_cell(f.title)} | {_cell(f.detail)} "
            f"| {', '.join(f.controls) or '-'} | {_cell(f.remediation)} |"
        )
    for ep in endpoints:
        if ep.state != "open":
            continue
        lines += ["", f"## {ep.target.label}: {ep.service or 'open'}", ""]
        if ep.note:
            lines += [ep.note, ""]
        if ep.tls is not None:
            t = ep.tls
            lines.append(
                "- TLS versions: "
                + ", ".join(f"{v} {'yes' if ok else 'no'}" for v, ok in t.versions.items())
            )
            if t.tls13_suite:
                lines.append(f"- TLS 1.3 suite: {t.tls13_suite}")
            if t.tls12_suites:
                lines.append(f"- TLS 1.0-1.2 suites accepted: {', '.join(t.tls12_suites)}")
            if t.certificate is not None:
                c = t.certificate
                trust = {
                    True: "chains to the CA",
                    False: f"untrusted ({c.chain_error})",
                    None: "chain not checked",
                }[c.chain_verified]
                lines.append(
                    f"- Certificate: subject `{c.subject}`, issuer `{c.issuer}`, "
                    f"not after {c.not_after} ({c.days_left} days left of {c.lifetime_days}), "
                    f"{c.key}, {c.signature_hash}, names {', '.join(c.names) or '-'}; {trust}"
                )
        if ep.http:
            lines += [
                "",
                "| HTTP GET | status | credentials | server | content |",
                "|---|---|---|---|---|",
            ]
            for a in ep.http:
                status = str(a.status) if a.status is not None else a.error
                lines.append(
                    f"| {_cell(shown(a.path))} | {status} | {a.credentials or '-'} "
                    f"| {_cell(a.server) or '-'} | {_cell(a.content_type) or '-'} |"
                )
        if ep.dicom:
            lines += [
                "",
                "| A-ASSOCIATE | calling | called | outcome | C-ECHO |",
                "|---|---|---|---|---|",
            ]
            for d in ep.dicom:
                echo = "-" if d.echo_status is None else f"0x{d.echo_status:04X}"
                outcome = d.outcome + (f" ({d.detail})" if d.detail else "")
                lines.append(
                    f"| {d.transport} | {_cell(d.calling)} | {_cell(d.called)} "
                    f"| {_cell(outcome)} | {echo} |"
                )
    return "\n".join(lines) + "\n"


def table(endpoints: list[Endpoint], colour: bool) -> str:
    rows = [("SEVERITY", "ENDPOINT", "SERVICE", "FINDING", "CONTROLS")]
    services = {ep.target.label: ep.service for ep in endpoints}
    for f in all_findings(endpoints):
        rows.append(
            (
                f.severity,
                f.endpoint,
                services.get(f.endpoint, ""),
                f"{f.title}: {f.detail}"[:90],
                ",".join(f.controls),
            )
        )
    for ep in endpoints:
        if ep.state != "open":
            rows.append(("-", ep.target.label, ep.state, "not reachable", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = []
    for n, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) for i in range(4)] + [row[4]]
        if colour and n > 0 and row[0] in COLOURS:
            cells[0] = COLOURS[row[0]] + cells[0] + RESET
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"
