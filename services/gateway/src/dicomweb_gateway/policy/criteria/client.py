"""`clients`: the token was issued to one of these OAuth clients (`client_id`)."""

from __future__ import annotations

from .base import Facts, Result


def evaluate(spec: tuple[str, ...], facts: Facts) -> Result:
    if facts.principal.client_id in spec:
        return True, "client-ok"
    return False, "client-unauthorized"
