"""UID claims: the study, series and patient each stored UID belongs to (AP-7).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "uid_claim",
        sa.Column("level", sa.String(8), primary_key=True),
        sa.Column("uid", sa.String(64), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
        sa.Column("series_instance_uid", sa.String(64), nullable=True),
        sa.Column("patient_id", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("uid_claim")
