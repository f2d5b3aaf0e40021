"""The study index: study-level QIDO keys, modalities, and the orders searches page in.

Revision ID: 0003
Revises: 0002

Filled by STOW/DIMSE, the change feed and the reconciliation pass (store/index.py); an
existing deployment is indexed by the first reconciliation pass after the upgrade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "study_index",
        sa.Column("study_instance_uid", sa.String(64), primary_key=True),
        sa.Column("archive_id", sa.String(64), nullable=True, index=True),
        sa.Column("study_date", sa.String(8), nullable=False, server_default=""),
        sa.Column("study_time", sa.String(16), nullable=False, server_default=""),
        sa.Column("accession_number", sa.String(64), nullable=False, server_default=""),
        sa.Column("patient_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("patient_name", sa.String(324), nullable=False, server_default=""),
        sa.Column("patient_name_key", sa.String(324), nullable=False, server_default=""),
        sa.Column("referring_physician_key", sa.String(324), nullable=False, server_default=""),
        sa.Column("study_id", sa.String(16), nullable=False, server_default=""),
        sa.Column("study_description_key", sa.String(64), nullable=False, server_default=""),
        sa.Column("num_series", sa.Integer, nullable=False, server_default="0"),
        sa.Column("num_instances", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_update", sa.String(32), nullable=False, server_default=""),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_pass", sa.Integer, nullable=False, server_default="0"),
    )
    # The sort order of every search (newest first, then UID): one index scanned backwards.
    op.create_index(
        "ix_study_index_order", "study_index", ["study_date", "study_time", "study_instance_uid"]
    )
    op.create_index("ix_study_index_accession_number", "study_index", ["accession_number"])
    op.create_index("ix_study_index_patient_id", "study_index", ["patient_id"])
    op.create_index("ix_study_index_patient_name_key", "study_index", ["patient_name_key"])
    op.create_table(
        "study_index_modality",
        sa.Column(
            "study_instance_uid",
            sa.String(64),
            sa.ForeignKey("study_index.study_instance_uid", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("modality", sa.String(16), primary_key=True),
    )
    op.create_index("ix_study_index_modality_modality", "study_index_modality", ["modality"])
    # Policy facts looked up by patient (patient: own) and claims by study (owner maps).
    op.create_index("ix_study_patient_id", "study", ["patient_id"])


def downgrade() -> None:
    op.drop_index("ix_study_patient_id", "study")
    op.drop_table("study_index_modality")
    op.drop_table("study_index")
