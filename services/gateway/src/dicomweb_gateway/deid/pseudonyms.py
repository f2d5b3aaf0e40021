"""Keyed pseudonyms for one research project: UIDs, identifiers and a per-patient date shift.

Every value is an HMAC-SHA256 under a key derived from the deployment's de-identification key
(generated at `make up` into the run directory, never committed) and the project name, so:

- the same study always gets the same pseudonymous UIDs within a project (consistent across
  requests, workers and restarts), different projects get unrelated ones (no linkage between
  projects), and nobody without the key can compute or invert them;
- the gateway maps a pseudonym back only through the reverse map it writes when it hands a
  pseudonym out (`store.py`), never by guessing.

Pseudonymous UIDs use the `2.25` root (PS3.5 B.2: a UUID-derived integer): 128 bits of the
HMAC as a decimal, at most 44 characters.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

UID_ROOT = "2.25."
DATE_SHIFT_MIN_DAYS = 30
DATE_SHIFT_SPAN_DAYS = 3650  # shifts of 30 to 3679 days into the past, per patient


def project_key(master_key: bytes, project: str) -> bytes:
    return hmac.new(master_key, b"zt-deid-project\0" + project.encode(), hashlib.sha256).digest()


@dataclass
class Pseudonymizer:
    """The keyed mappings of one project. `issued` collects (real, pseudonymous) UID pairs
    handed out, so the caller can record them in the reverse map."""

    key: bytes
    project: str
    issued: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_project(cls, master_key: bytes, project: str) -> Pseudonymizer:
        return cls(project_key(master_key, project), project)

    def _mac(self, kind: str, value: str) -> bytes:
        return hmac.new(self.key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, real: str) -> str:
        pseudo = UID_ROOT + str(int.from_bytes(self._mac("uid", real)[:16], "big"))
        self.issued[real] = pseudo
        return pseudo

    def text(self, value: str) -> str:
        """A dummy identifier (PS3.15 action D) that is the same for the same value: fits SH."""
        return "DEID-" + self._mac("text", value).hex()[:10].upper()

    def date_shift_days(self, patient_id: str) -> int:
        """Days to subtract from every date of this patient (Retain Longitudinal Temporal
        Information with Modified Dates: intervals within a patient are kept)."""
        n = int.from_bytes(self._mac("date", patient_id)[:4], "big")
        return DATE_SHIFT_MIN_DAYS + n % DATE_SHIFT_SPAN_DAYS
