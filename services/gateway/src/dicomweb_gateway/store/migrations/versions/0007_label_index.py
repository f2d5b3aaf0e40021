"""The studies carrying a label, by label: the study index's plan for a rare label.

Revision ID: 0007_label_index
Revises: 0006_deid_pseudonyms

A search whose permitted set is a few studies with one label (a research project) is answered
from this index and sorted (store/predicate.py, `rare_labels`), not by checking every study
along the index order.
"""

from __future__ import annotations

from alembic import op

revision = "0007_label_index"
down_revision = "0006_deid_pseudonyms"


def upgrade() -> None:
    op.create_index("ix_study_label_label", "study_label", ["label", "study_instance_uid"])


def downgrade() -> None:
    op.drop_index("ix_study_label_label", table_name="study_label")
