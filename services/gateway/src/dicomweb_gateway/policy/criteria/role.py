"""`roles`: the caller holds at least one of these realm roles (`realm_access.roles`)."""

from __future__ import annotations

from .base import Facts, Result


def evaluate(spec: tuple[str, ...], facts: Facts) -> Result:
    if facts.principal.roles & set(spec):
        return True, "role-ok"
    return False, "role-unauthorized"
