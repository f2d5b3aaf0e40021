"""Device inventory: the DICOM and DICOMweb peers the deployment knows (DV-3, issue 18).

Revision ID: 0004_devices
Revises: 0002 (to be rebased onto 0003, the study index, when both branches meet)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_devices"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "device_inventory",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),  # dimse | legacy | dicomweb
        sa.Column("ae_title", sa.String(16), nullable=True),
        sa.Column("host", sa.String(64), nullable=True),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("permissions", sa.Text, nullable=False),  # JSON list of sentences
        sa.Column("tls", sa.String(200), nullable=False),
        sa.Column("certificate_sha256", sa.String(64), nullable=True),
        sa.Column("certificate_not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("registered", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_echo_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_store_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_address", sa.String(64), nullable=True),
        sa.Column("last_tls", sa.String(100), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("device_inventory")
