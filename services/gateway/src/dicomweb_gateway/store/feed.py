"""Labelling and indexing studies as they arrive: after a STOW (`on_stored`) and from the
archive's change feed, so studies that reach the archive another way are labelled before anyone
can see them (until then the policy store does not know them and they are visible to nobody)
and indexed for search (store/indexer.py).

`ArchiveSource` (`archive.port.IndexSource`) is the small interface this needs from the archive;
each archive adapter provides one (`Archive.index_source`), with a change feed where the product
has one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..archive.port import ArchiveStudy, Change, IndexSource, StudyContents
from .db import LabelUpdate, PolicyStore
from .ingest import IngestRules

log = logging.getLogger(__name__)

# Change types that mean "a study exists or changed" (the names Orthanc's /changes uses).
STUDY_CHANGES = frozenset({"NewStudy", "StableStudy"})
DELETED = "Deleted"


ArchiveSource = IndexSource  # the name the study index has always used


async def ingest(
    store: PolicyStore, rules: IngestRules, attributes: Mapping[str, Any], via: str
) -> LabelUpdate | None:
    """Record one study and the labels the ingest rules give it."""
    uid = attributes.get("StudyInstanceUID")
    if not isinstance(uid, str) or not uid.strip():
        return None
    patient_id = attributes.get("PatientID")
    return await store.record_ingest(
        uid.strip(),
        str(patient_id).strip() if patient_id else None,
        rules.labels_for(attributes),
        via,
    )


__all__ = [
    "DELETED",
    "STUDY_CHANGES",
    "ArchiveSource",
    "ArchiveStudy",
    "Change",
    "StudyContents",
    "ingest",
]
