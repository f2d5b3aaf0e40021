"""Policy store: studies, labels, label history, break-glass grants, feed cursor.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "study",
        sa.Column("study_instance_uid", sa.String(64), primary_key=True),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "study_label",
        sa.Column(
            "study_instance_uid",
            sa.String(64),
            sa.ForeignKey("study.study_instance_uid", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("label", sa.String(128), primary_key=True),
    )
    op.create_table(
        "label_change",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(256), nullable=False),
        sa.Column("via", sa.String(32), nullable=False),
        sa.Column("added", sa.Text, nullable=False),
        sa.Column("removed", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_table(
        "break_glass_grant",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("subject", sa.String(256), nullable=False, index=True),
        sa.Column("issuer", sa.String(512), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.create_table(
        "feed_cursor",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("last_seq", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    for table in ("feed_cursor", "break_glass_grant", "label_change", "study_label", "study"):
        op.drop_table(table)
