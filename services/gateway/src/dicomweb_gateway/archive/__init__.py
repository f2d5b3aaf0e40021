"""The archive port and its adapters: one module per archive product (docs/archives.md).

`open_archive(settings)` builds the adapter named by `settings.archive.kind`: the module
`archive/<kind>.py` and its `ADAPTER` class. A third archive is one more module here and one
more value of `settings.ARCHIVE_KINDS`; nothing outside this package names a product.
"""

from __future__ import annotations

import importlib

import httpx

from ..settings import ARCHIVE_KINDS, Settings
from .port import Archive, ArchiveStudy, Change, IndexSource, Location, StudyContents


def native_roots() -> frozenset[str]:
    """The first path segments of every adapter's product REST API and UI (`NATIVE_ROOTS`):
    the gateway answers 404 for all of them, whichever archive it fronts (AP-2)."""
    roots: set[str] = set()
    for kind in ARCHIVE_KINDS:
        roots |= importlib.import_module(f"{__name__}.{kind}").NATIVE_ROOTS
    return frozenset(roots)


def open_archive(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> Archive:
    """The one adapter instance (one connection pool) for this process."""
    module = importlib.import_module(f"{__name__}.{settings.archive.kind}")
    adapter: Archive = module.ADAPTER.from_settings(settings, transport)
    return adapter


__all__ = [
    "Archive",
    "ArchiveStudy",
    "Change",
    "IndexSource",
    "Location",
    "StudyContents",
    "native_roots",
    "open_archive",
]
