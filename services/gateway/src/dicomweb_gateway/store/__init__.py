"""Policy store: study facts and labels, ingest rules, break-glass grants, the change feed."""

from __future__ import annotations

from .db import Claim, LabelUpdate, PolicyStore, UnknownStudy
from .feed import ArchiveSource, ingest
from .index import IndexEntry, StudyIndex
from .indexer import ChangeFeedPoller, Indexer, Reconciler
from .ingest import IngestRules, load_ingest_rules, parse_ingest_rules

__all__ = [
    "ArchiveSource",
    "ChangeFeedPoller",
    "Claim",
    "IndexEntry",
    "Indexer",
    "IngestRules",
    "LabelUpdate",
    "PolicyStore",
    "Reconciler",
    "StudyIndex",
    "UnknownStudy",
    "ingest",
    "load_ingest_rules",
    "parse_ingest_rules",
]
