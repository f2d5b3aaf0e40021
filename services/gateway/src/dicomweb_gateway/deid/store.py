"""The reverse map of pseudonymous UIDs (table `deid_pseudonym`, migration 0006).

The gateway records every (pseudonymous, real) UID pair it hands out, per project; a request
that names a pseudonym resolves through it. Each worker remembers what it has recorded and
resolved (bounded, AP-8), so a pair costs one insert per worker and a resolution one indexed
read; rows never change, so the memory is never stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from .pseudonyms import UID_ROOT

_metadata = sa.MetaData()
PSEUDONYMS = sa.Table(
    "deid_pseudonym",
    _metadata,
    sa.Column("pseudonymous_uid", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(64), primary_key=True),
    sa.Column("real_uid", sa.String(64), nullable=False),
)
MAX_REMEMBERED = 100_000  # pairs per worker (AP-8); when full it starts over


class PseudonymStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._known: dict[str, tuple[str, str]] = {}  # pseudonym -> (project, real)

    def _remember(self, pseudonym: str, project: str, real: str) -> None:
        if len(self._known) >= MAX_REMEMBERED:
            self._known = {}
        self._known[pseudonym] = (project, real)

    async def record(self, project: str, pairs: Mapping[str, str]) -> None:
        """Record real -> pseudonymous pairs handed out for `project` (idempotent)."""
        rows = [
            {"pseudonymous_uid": pseudo, "project": project, "real_uid": real}
            for real, pseudo in pairs.items()
            if self._known.get(pseudo) != (project, real)
        ]
        if not rows:
            return
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        statement = insert(PSEUDONYMS).values(rows).on_conflict_do_nothing()
        async with self.engine.begin() as conn:
            await conn.execute(statement)
        for row in rows:
            self._remember(row["pseudonymous_uid"], project, row["real_uid"])

    async def resolve(self, uids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """pseudonym -> (project, real UID) for those of `uids` that are pseudonyms."""
        candidates = {u for u in uids if u.startswith(UID_ROOT)}
        found = {u: self._known[u] for u in candidates if u in self._known}
        missing = candidates - found.keys()
        if missing:
            query = sa.select(PSEUDONYMS).where(PSEUDONYMS.c.pseudonymous_uid.in_(sorted(missing)))
            async with self.engine.connect() as conn:
                for row in (await conn.execute(query)).all():
                    if row.pseudonymous_uid in found:
                        # One pseudonym in two projects: a collision of 128-bit HMACs, or
                        # tampering. Resolve to nothing rather than guess.
                        found.pop(row.pseudonymous_uid)
                        missing.discard(row.pseudonymous_uid)
                        continue
                    found[row.pseudonymous_uid] = (row.project, row.real_uid)
            for pseudo in found.keys() & missing:
                self._remember(pseudo, *found[pseudo])
        return found
