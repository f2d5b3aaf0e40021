"""`groups`: the caller is in at least one of these groups (the `groups` claim)."""

from __future__ import annotations

from .base import Facts, Result


def evaluate(spec: tuple[str, ...], facts: Facts) -> Result:
    if facts.principal.groups & set(spec):
        return True, "group-ok"
    return False, "group-unauthorized"
