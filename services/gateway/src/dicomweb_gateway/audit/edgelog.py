"""The edge's access log into the audit trail: `python -m dicomweb_gateway edge-audit`.

The edge (nginx) writes one JSON line per request (ztstack/templates/nginx.conf, format `zt`).
This follows that file and adds to the hash-chained store what only the edge knows:

- **Refusals the edge made itself** (no upstream: a malformed request, the per-address rate
  limit, an internal path): one Security Alert each, like the gateway's refusals (VA-7).
- **What the data plane delivered.** The gateway recorded each decision when it made it
  (`dataplane.authz`: one "DICOM Instances Transferred", 110104 R, per user, study and decision
  window). For every decision with traffic in a batch, a copy of that record follows, timed now,
  with what was actually delivered under it: requests, bytes and status counts (a
  ParticipantObjectDetail `Delivered` on the study), and an outcome from those statuses.
  PS3.15 A.5.3.7 describes the transfer of a set of instances as one event; a decision window
  for one study and one user is that set, so one record per window, not one per frame.

The position in the log is kept in `<log>.offset`, written after the records are committed: a
crash re-reads a batch (records may repeat, none is lost). While the store is down nothing
advances, and the gateway makes no new decision either (its preflight fails closed).
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..context import RequestContext
from .messages import INSTANCES_TRANSFERRED, AuditMessage, Participants, messages_for
from .store import AuditStore, Filters, now_utc

log = logging.getLogger(__name__)

_CODES = {400: "invalid_request", 404: "not_found", 408: "timeout", 413: "payload_too_large",
          414: "invalid_request", 429: "too_many_requests"}  # fmt: skip
MAX_BATCH_BYTES = 8 * 1024 * 1024


@dataclass
class Delivery:
    requests: int = 0
    bytes: int = 0
    statuses: Counter[int] = field(default_factory=Counter)


class EdgeLogAuditor:
    def __init__(self, store: AuditStore, participants: Participants, log_file: Path) -> None:
        self.store = store
        self.participants = participants
        self.log_file = log_file
        self.offset_file = log_file.with_name(log_file.name + ".offset")

    def _offset(self) -> int:
        try:
            return int(self.offset_file.read_text(encoding="ascii").strip() or 0)
        except (OSError, ValueError):
            return 0

    def poll_once(self) -> int:
        """Record everything logged since the last poll; returns how many lines were read."""
        try:
            size = self.log_file.stat().st_size
        except FileNotFoundError:
            return 0
        offset = self._offset()
        if size < offset:
            offset = 0  # the log was rotated
        with self.log_file.open("rb") as f:
            f.seek(offset)
            chunk = f.read(MAX_BATCH_BYTES)
        complete = chunk[: chunk.rfind(b"\n") + 1]
        if not complete:
            return 0
        lines = [parse_line(line) for line in complete.splitlines() if line.strip()]
        batches = self.records(lines)
        if batches:
            self.store.append_many(batches)
        tmp = self.offset_file.with_suffix(".tmp")
        tmp.write_text(str(offset + len(complete)), encoding="ascii")
        tmp.replace(self.offset_file)
        return len(lines)

    def records(self, lines: Iterable[dict[str, Any]]) -> list[tuple[list[AuditMessage], str]]:
        batches: list[tuple[list[AuditMessage], str]] = []
        deliveries: dict[str, Delivery] = {}
        for line in lines:
            status = int(line.get("s", 0))
            decision = str(line.get("d") or "")
            if decision:
                d = deliveries.setdefault(decision, Delivery())
                d.requests += 1
                d.bytes += int(line.get("b", 0))
                d.statuses[status] += 1
            elif not line.get("g") and status >= 400:
                batches.append((self.refusal(line, status), ""))
        now = now_utc()
        for decision, delivery in deliveries.items():
            rows = self.store.search(Filters(request_id=decision, limit=1))
            if rows:
                batches.append(([delivered(rows[0], delivery, now)], decision))
        return batches

    def refusal(self, line: dict[str, Any], status: int) -> list[AuditMessage]:
        uri = str(line.get("u", ""))
        path, _, query = uri.partition("?")
        ctx = RequestContext(
            request_id=uuid.uuid4().hex,
            method=str(line.get("m", "")),
            path=path,
            client_ip=str(line.get("ip", "")),
            query=query,
            status=status,
            error_code=_CODES.get(status, "refused"),
            error_detail=f"refused by the edge (HTTP {status})",
        )
        return messages_for(ctx, self.participants, now_utc())

    def run(self, interval: float = 2.0) -> None:
        while True:
            try:
                self.poll_once()
            except Exception:
                log.exception("edge audit: poll failed; retrying in %s s", interval)
            time.sleep(interval)


def parse_line(raw: bytes) -> dict[str, Any]:
    """One log line. nginx's `escape=json` leaves bytes above 0x7F as they came (a URI may hold
    any byte), so decoding replaces what is not UTF-8; a line that still does not parse becomes
    a refusal record of its own instead of stopping the audit (the audit must never stall on
    input a client chose)."""
    try:
        line = json.loads(raw.decode("utf-8", "replace"))
        if isinstance(line, dict):
            return line
    except ValueError:
        pass
    return {"m": "?", "u": raw[:512].decode("latin-1"), "s": 400, "g": "", "ip": ""}


def delivered(row: dict[str, Any], delivery: Delivery, now: Any) -> AuditMessage:
    """The decision's record again, now, with what the data plane delivered under it."""
    root = ET.fromstring(str(row["message"]))  # noqa: S314 - the gateway's own record
    event = root.find("EventIdentification")
    outcome = 0 if all(s < 400 for s in delivery.statuses) else 4
    if event is not None:
        event.set("EventDateTime", now.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        event.set("EventOutcomeIndicator", str(outcome))
    summary = f"requests={delivery.requests};bytes={delivery.bytes};status=" + ",".join(
        f"{s}x{n}" for s, n in sorted(delivery.statuses.items())
    )
    for obj in root.findall("ParticipantObjectIdentification"):
        code = obj.find("ParticipantObjectIDTypeCode")
        if code is None or code.get("csd-code") != "110180":
            continue
        detail = ET.Element(
            "ParticipantObjectDetail",
            type="Delivered",
            value=base64.b64encode(summary.encode()).decode(),
        )
        # A.5.1: ParticipantObjectDetail comes before ParticipantObjectDescription.
        children = list(obj)
        at = next(
            (i for i, c in enumerate(children) if c.tag == "ParticipantObjectDescription"),
            len(children),
        )
        obj.insert(at, detail)
    return AuditMessage(
        INSTANCES_TRANSFERRED,
        "R",
        outcome,
        now,
        ET.tostring(root, encoding="unicode"),
        row.get("user_id"),
        tuple(_ids(row.get("patients"))),
        tuple(_ids(row.get("studies"))),
    )


def _ids(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str) and value:
        try:
            loaded = json.loads(value)
        except ValueError:
            return [v for v in value.split("|") if v]
        return [str(v) for v in loaded] if isinstance(loaded, list) else []
    return []
