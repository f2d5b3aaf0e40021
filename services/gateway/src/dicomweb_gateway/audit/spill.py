"""The audit spill: records whose commit failed wait here until the chain accepts them (AO-2,
AO-3: "nothing lost").

A request checks the store before it forwards anything (`Auditor.preflight`), but the store
can fail between that check and the request's own record: a database stopped mid-load, a disk
filling up. Such a request may already have reached the archive, so its record must not be
lost although the answer becomes 503. The Auditor writes the record's rows here (one JSON line
per failed group commit, fsynced) and keeps every new request out (503 at preflight) until a
background task has appended them to the chain; then requests flow again. A gateway killed
meanwhile leaves its file behind, and the next gateway to start with the same spill directory
appends it (a file is owned through an exclusive `flock`, so a live gateway's file is never
taken). A row that did reach the chain (its commit succeeded but the acknowledgement was lost)
is not appended twice (`AuditStore.append_rows(recovered=True)`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)


class Spill:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._file: TextIO | None = None
        self._path: Path | None = None
        self.rows: list[dict[str, Any]] = []  # not yet in the chain (this process's, in order)

    @property
    def pending(self) -> bool:
        return bool(self.rows)

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Keep rows that failed to commit: in memory, and durably on disk when possible."""
        self.rows.extend(rows)
        if self.directory is None:
            log.critical("audit spill: no spill directory; %d records held in memory", len(rows))
            return
        try:
            handle = self._open()
            handle.write(json.dumps(rows, ensure_ascii=False, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            log.critical(
                "audit spill: cannot write %s (%s); %d records held in memory only",
                self.directory,
                exc,
                len(rows),
            )

    def _open(self) -> TextIO:
        if self._file is None:
            assert self.directory is not None
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self.directory / f"spill-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            handle = path.open("a", encoding="utf-8")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file, self._path = handle, path
        return self._file

    def committed(self, count: int) -> None:
        """The first `count` pending rows are in the chain; with none left, the file goes."""
        self.rows = self.rows[count:]
        if self.rows or self._file is None:
            return
        if self._file is not None:
            with contextlib.suppress(OSError):
                assert self._path is not None
                self._path.unlink()
                self._file.close()
            self._file = self._path = None

    def adopt_orphans(self) -> None:
        """Take the files of gateways that died with records pending (start-up)."""
        if self.directory is None or not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("spill-*.jsonl")):
            try:
                handle = path.open("r+", encoding="utf-8")
            except OSError:
                continue
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()  # a live gateway's own file
                continue
            rows: list[dict[str, Any]] = []
            for line in handle.read().splitlines():
                with contextlib.suppress(ValueError):
                    batch = json.loads(line)
                    if isinstance(batch, list):
                        rows.extend(r for r in batch if isinstance(r, dict))
            if rows:
                log.warning(
                    "audit spill: %d records left by an earlier gateway in %s", len(rows), path
                )
                self.add(rows)
            path.unlink()
            handle.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def retry_delay(attempt: int) -> float:
    return float(min(5.0, 0.25 * 2 ** min(attempt, 5)))
