"""Step-up: the login (`auth_time`) must be at most `max_age` seconds old (RFC 9470, ID-4)."""

from __future__ import annotations

from .base import Facts, Result


def evaluate(max_age: int, facts: Facts) -> Result:
    auth_time = facts.principal.auth_time
    if auth_time is not None and 0 <= facts.now - auth_time <= max_age:
        return True, "auth-age-ok"
    return False, "auth-age-exceeded"
