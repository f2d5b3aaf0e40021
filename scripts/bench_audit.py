#!/usr/bin/env python3
"""Audit chain append rate (`make bench`, issue 15): how many records per second the
hash-chained audit store takes, on SQLite (one file) and on PostgreSQL (a throwaway cluster
with the server's default settings: fsync on), from 1 and from 4 writer processes appending
at once (as 1 and 4 gateway replicas). Each append is one transaction of one record, the worst
case (the gateway's group commit puts every record that arrives during a commit into the next
one). The chain is verified at the end of every run. Loopback only, bounded in time.

    python scripts/bench_audit.py [--seconds 5] [--writers 1,4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for src in ("services/gateway/src", "services/stack/src"):
    sys.path.insert(0, str(REPO / src))

from dicomweb_gateway.audit.messages import QUERY, AuditMessage  # noqa: E402
from dicomweb_gateway.audit.store import AuditStore  # noqa: E402

XML = (
    '<AuditMessage><EventIdentification EventActionCode="E" EventDateTime="2026-01-05T10:00:00Z"'
    ' EventOutcomeIndicator="0"><EventID csd-code="110112" codeSystemName="DCM"'
    ' originalText="Query"/></EventIdentification></AuditMessage>'
)


def _writer(url: str, worker: int, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = AuditStore(url)
    store.ensure_schema()
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        message = AuditMessage(
            QUERY, "E", 0, datetime.now(UTC), XML, f"bench-{worker}", ("P1",), (f"1.2.{n}",)
        )
        store.append([message], f"{worker}-{n}")
        n += 1
    store.dispose()
    out.put(n)


def run(url: str, writers: int, seconds: float) -> tuple[float, int, bool]:
    AuditStore(url).ensure_schema()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, w, seconds, out)) for w in range(writers)]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join(60)
    store = AuditStore(url)
    intact = store.verify() == [] and store.head()[0] >= total
    store.dispose()
    return total / seconds, total, intact


def main() -> int:
    from ztstack.postgres import Cluster

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writers", default="1,4")
    args = parser.parse_args()
    counts = [int(w) for w in args.writers.split(",")]
    rows = []
    cluster = Cluster.create()
    try:
        cluster.start()
        with tempfile.TemporaryDirectory() as tmp:
            for writers in counts:
                for backend in ("sqlite", "postgresql"):
                    if backend == "sqlite":
                        url = f"sqlite:///{tmp}/audit-{writers}.db"
                    else:
                        url = cluster.create_database(f"audit_{writers}")
                    rate, total, intact = run(url, writers, args.seconds)
                    rows.append((backend, writers, rate, total, intact))
                    print(
                        f"{backend:10} writers={writers}  {rate:8.0f} records/s  "
                        f"({total} in {args.seconds:.0f} s)  chain {'OK' if intact else 'BROKEN'}",
                        flush=True,
                    )
    finally:
        cluster.remove()
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
