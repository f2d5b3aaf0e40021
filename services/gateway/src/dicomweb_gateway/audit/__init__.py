"""Audit trail (DICOM PS3.15 A.5), owned by the audit work.

The gateway calls `preflight()` before forwarding anything (the store must be writable, else
503: fail closed, AO-2) and `record(ctx)` once at the end of every request, allowed or denied.
Audit is a notification: `record` never changes the outcome already decided.
"""

from __future__ import annotations

from ..context import RequestContext


class Auditor:
    """Placeholder that records nothing; replaced by the hash-chained store."""

    async def preflight(self) -> None:
        return None

    async def record(self, ctx: RequestContext) -> None:
        return None

    async def close(self) -> None:
        return None
