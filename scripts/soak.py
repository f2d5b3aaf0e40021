#!/usr/bin/env python3
"""Soak: two gateway replicas on one PostgreSQL for a long while (`make soak`, not in CI; issue
15, AO-3).

Starts a throwaway PostgreSQL cluster (the server's defaults, fsync on) and two gateways (one
worker each, rate limit raised) with the run's settings but their stores on that cluster; then
mixed traffic from the demo users, spread over both replicas, for SOAK_SECONDS (default 600):
QIDO and study metadata (north clinician, radiologist), a denied read (researcher: 403 is the
expected answer), STOW of one small new instance (modality), the admin's study view. At the end
it reports: requests and errors (an answer other than the expected one), p50/p95 latency of the
first and the last minute (drift), RSS of each gateway process at the start and the end, audit
records written against requests made (each answer's x-request-id must have its record), and
the audit chain's verification. Writes reports/soak.md. Loopback only, bounded concurrency.

    make up && make soak            # or: SOAK_SECONDS=180 .venv/bin/python scripts/soak.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
for src in ("services/gateway/src", "services/stack/src", "idp/client/src", "."):
    sys.path.insert(0, str(REPO / src))

MFA = "urn:zt:acr:mfa"
READ = "openid user/ImagingStudy.rs"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Sample:
    at: float
    seconds: float
    kind: str
    status: int
    expected: bool
    request_id: str


@dataclass
class Tokens:
    stack: dict[str, Any]
    cache: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, who: str) -> str:
        from dicomweb_cli import client_credentials, login_password

        with self.lock:
            token = self.cache.get(who)
            if token is None or float(token.claims.get("exp", 0)) - time.time() < 90:
                if who == "modality-ct1":
                    token = client_credentials(self.stack, who, "system/ImagingStudy.c")
                elif who == "admin":
                    token = login_password(self.stack, who, "openid", acr_values=MFA)
                elif who == "north-clinician":
                    token = login_password(self.stack, who, READ, acr_values=MFA)
                else:
                    token = login_password(self.stack, who, READ)
                self.cache[who] = token
            return str(token.access_token)


def start_gateway(stack: dict[str, Any], run_dir: Path, name: str, db: str, audit: str) -> Any:
    from ztstack.ports import free_port

    settings = yaml.safe_load((run_dir / "gateway" / "settings.yaml").read_text())
    port = free_port()
    settings.update(
        listen={"host": "127.0.0.1", "port": port},
        workers=1,
        database_url=db,
        viewer={"dist_dir": None, "config_template": None},
    )
    settings["limits"]["requests_per_minute"] = 10_000_000
    settings["audit"] = settings["audit"] | {
        "database_url": audit,
        "spill_dir": str(run_dir / "gateway" / f"spill-{name}"),
    }
    path = run_dir / "gateway" / f"settings-{name}.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    log = (run_dir / "logs" / f"gateway-{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomweb_gateway", "serve", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"https://localhost:{port}"
    for _ in range(150):
        time.sleep(0.2)
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", verify=stack["ca_cert"], timeout=2).status_code == 200:
                return proc, url
        if proc.poll() is not None:
            break
    proc.terminate()
    raise SystemExit(f"soak gateway {name} did not start; see {log.name}")


def stow_body(patient: str) -> tuple[str, bytes]:
    from pydicom.uid import generate_uid

    from tests.dicom_parts import CT_IMAGE, multipart, new_instance, part10

    ds = new_instance(generate_uid(), patient, rows=8, sop_class=CT_IMAGE, modality="CT")
    return multipart([part10(ds)])


def traffic(
    urls: list[str],
    tokens: Tokens,
    studies: dict[str, str],
    stop: threading.Event,
    out: list[Sample],
) -> None:
    ca = tokens.stack["ca_cert"]
    rng = random.Random()
    with httpx.Client(verify=ca, timeout=60) as client:
        while not stop.is_set():
            url = rng.choice(urls)
            pick = rng.random()
            started = time.perf_counter()
            if pick < 0.35:
                kind, expected = "qido", {200}
                r = client.get(
                    f"{url}/dicom-web/studies?limit=10",
                    headers={"Authorization": f"Bearer {tokens.get('north-clinician')}"},
                )
            elif pick < 0.65:
                kind, expected = "metadata", {200}
                who = rng.choice(["north-clinician", "radiologist"])
                r = client.get(
                    f"{url}/dicom-web/studies/{studies['north']}/metadata",
                    headers={"Authorization": f"Bearer {tokens.get(who)}"},
                )
            elif pick < 0.75:
                kind, expected = "denied", {403}
                r = client.get(
                    f"{url}/dicom-web/studies/{studies['north']}/metadata",
                    headers={"Authorization": f"Bearer {tokens.get('researcher')}"},
                )
            elif pick < 0.92:
                kind, expected = "stow", {200}
                ctype, body = stow_body("ZT-P001")
                r = client.post(
                    f"{url}/dicom-web/studies",
                    headers={
                        "Authorization": f"Bearer {tokens.get('modality-ct1')}",
                        "Content-Type": ctype,
                        "Accept": "application/dicom+json",
                    },
                    content=body,
                )
            else:
                kind, expected = "admin", {200}
                r = client.get(
                    f"{url}/admin/studies/{studies['north']}",
                    headers={"Authorization": f"Bearer {tokens.get('admin')}"},
                )
            out.append(
                Sample(
                    time.monotonic(),
                    time.perf_counter() - started,
                    kind,
                    r.status_code,
                    r.status_code in expected,
                    r.headers.get("x-request-id", ""),
                )
            )


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> int:
    from dicomweb_gateway.audit.store import AuditStore, audit_record
    from sqlalchemy import select
    from ztstack.demo_data import study
    from ztstack.postgres import Cluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=".run")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    run_dir = Path(args.run_dir).resolve()
    stack = json.loads((run_dir / "stack.json").read_text())
    tokens = Tokens(stack)
    studies = {"north": study("p001-ct-chest").study_instance_uid}
    cluster = Cluster.create()
    gateways: list[Any] = []
    try:
        cluster.start()
        db, audit = cluster.create_database("gateway"), cluster.create_database("audit")
        gateways = [start_gateway(stack, run_dir, n, db, audit) for n in ("soak-a", "soak-b")]
        urls = [url for _, url in gateways]
        # The replicas' fresh store learns the archive's studies from the change feed first.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            r = httpx.get(
                f"{urls[0]}/admin/studies/{studies['north']}",
                headers={"Authorization": f"Bearer {tokens.get('admin')}"},
                verify=stack["ca_cert"],
            )
            if r.status_code == 200 and r.json().get("labels"):
                break
            time.sleep(1)
        for who in ("north-clinician", "radiologist", "researcher", "modality-ct1", "admin"):
            tokens.get(who)
        rss_start = [rss_kib(p.pid) for p, _ in gateways]
        samples: list[Sample] = []
        stop = threading.Event()
        threads = [
            threading.Thread(target=traffic, args=(urls, tokens, studies, stop, samples))
            for _ in range(args.clients)
        ]
        began = time.monotonic()
        for t in threads:
            t.start()
        while time.monotonic() - began < args.seconds:
            time.sleep(5)
            print(f"  {time.monotonic() - began:5.0f} s  {len(samples)} requests", flush=True)
        stop.set()
        for t in threads:
            t.join(120)
        rss_end = [rss_kib(p.pid) for p, _ in gateways]
        time.sleep(2)  # the last group commits
        store = AuditStore(audit)
        ids = {s.request_id for s in samples}
        with store._reader.connect() as conn:
            recorded = {
                r[0] for r in conn.execute(select(audit_record.c.request_id)) if r[0] in ids
            }
        problems = store.verify()
        store.dispose()
    finally:
        for proc, _ in gateways:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
        cluster.remove()
    first = [s.seconds for s in samples if s.at - began <= 60]
    last = [s.seconds for s in samples if s.at - began >= args.seconds - 60]
    errors = [s for s in samples if not s.expected]
    kinds: dict[str, int] = {}
    for s in samples:
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    lines = [
        "# Soak: two gateway replicas on one PostgreSQL (scripts/soak.py)",
        "",
        f"- duration: {args.seconds:.0f} s, {args.clients} client threads over 2 replicas",
        f"- requests: {len(samples)} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})",
        f"- errors (answer other than the expected one): {len(errors)}"
        + (f" {sorted({(e.kind, e.status) for e in errors})}" if errors else ""),
        f"- latency p50/p95, first minute: {pct(first, 50) * 1000:.1f} / "
        f"{pct(first, 95) * 1000:.1f} ms; last minute: {pct(last, 50) * 1000:.1f} / "
        f"{pct(last, 95) * 1000:.1f} ms",
        "- RSS per replica (start -> end): "
        + ", ".join(
            f"{a / 1024:.0f} -> {b / 1024:.0f} MiB" for a, b in zip(rss_start, rss_end, strict=True)
        ),
        f"- audit records for the requests made: {len(recorded)} of {len(ids)}"
        + (" (every request audited)" if len(recorded) == len(ids) else " (MISSING RECORDS)"),
        f"- audit chain: {'verified' if not problems else problems[:5]}",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    (REPO / "reports").mkdir(exist_ok=True)
    (REPO / "reports" / "soak.md").write_text(report)
    ok = not errors and len(recorded) == len(ids) and not problems
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
