"""The policy store's change marker: a version number every write to the policy facts bumps.

Revision ID: 0005_store_version
Revises: 0004_devices

Several gateway replicas cache study facts and break-glass grants while the store is unchanged
(`PolicyStore.change_marker`). SQLite reports changes itself (`PRAGMA data_version`); on
PostgreSQL a statement trigger bumps `store_version` in the same transaction as any INSERT,
UPDATE, DELETE or TRUNCATE of `study`, `study_label` and `break_glass_grant`, whoever writes
(any replica, the admin API, plain SQL). It fires BEFORE the statement, so every writer takes
the version row's lock before any row lock of those tables (no lock-order deadlock). The same
file runs on both databases; the table is unused on SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_store_version"
down_revision = "0004_devices"

WATCHED = ("study", "study_label", "break_glass_grant")


def upgrade() -> None:
    op.create_table(
        "store_version",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO store_version (id, version) VALUES (1, 1)")
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE FUNCTION policy_store_bump() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN UPDATE store_version SET version = version + 1 WHERE id = 1; RETURN NULL; END $$"
    )
    for table in WATCHED:
        op.execute(
            f"CREATE TRIGGER {table}_bump_version BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION policy_store_bump()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in WATCHED:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_bump_version ON {table}")
        op.execute("DROP FUNCTION IF EXISTS policy_store_bump()")
    op.drop_table("store_version")
