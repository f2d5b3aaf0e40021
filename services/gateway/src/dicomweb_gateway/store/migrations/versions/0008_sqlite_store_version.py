"""SQLite's change marker: `store_version`, bumped by triggers, as on PostgreSQL (0005).

Revision ID: 0008_sqlite_store_version
Revises: 0007_label_index

Until now a SQLite store reported changes with `PRAGMA data_version`, which moves on any commit
to any table: every STOW (UID claims, the study index), the change feed's lease and cursor, and
the index walk emptied every worker's cache of study facts and grants, so under load every
decision read the store again. Row triggers on the three tables the facts come from bump the
version in the same transaction as the write, whoever writes (any worker, the admin API, plain
SQL), exactly like PostgreSQL's statement trigger; writes elsewhere leave the caches warm.
"""

from __future__ import annotations

from alembic import op

revision = "0008_sqlite_store_version"
down_revision = "0007_label_index"

WATCHED = ("study", "study_label", "break_glass_grant")
EVENTS = ("INSERT", "UPDATE", "DELETE")
BUMP = "UPDATE store_version SET version = version + 1 WHERE id = 1;"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in WATCHED:
        for event in EVENTS:
            op.execute(
                f"CREATE TRIGGER {table}_{event.lower()}_bump_version "
                f"AFTER {event} ON {table} BEGIN {BUMP} END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in WATCHED:
        for event in EVENTS:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_{event.lower()}_bump_version")
