"""De-identified views (DA-1): the reverse map of pseudonymous UIDs the gateway handed out.

Revision ID: 0006_deid_pseudonyms
Revises: 0005_store_version

A pseudonymous UID is an HMAC of the real one under the project's key (dicomweb_gateway/deid),
so it cannot be inverted; the gateway records each pair when it first hands the pseudonym out,
and a request naming the pseudonym resolves through this table. Rows are only ever added.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_deid_pseudonyms"
down_revision = "0005_store_version"


def upgrade() -> None:
    op.create_table(
        "deid_pseudonym",
        sa.Column("pseudonymous_uid", sa.String(64), primary_key=True),
        sa.Column("project", sa.String(64), primary_key=True),
        sa.Column("real_uid", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("deid_pseudonym")
