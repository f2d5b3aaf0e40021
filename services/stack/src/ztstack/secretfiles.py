"""Random secrets generated at run time into `<run>/secrets/` (0600), never committed."""

from __future__ import annotations

import secrets
from pathlib import Path

from .pki import write_private


def ensure_secret(path: Path, nbytes: int = 24) -> str:
    """Return the secret stored at path, creating a random URL-safe one on first use."""
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    value = secrets.token_urlsafe(nbytes)
    write_private(path, value.encode())
    return value
