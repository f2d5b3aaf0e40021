"""Operation scopes (SMART App Launch v2, ARCHITECTURE section 5).

`check_token` is a token criterion applied to every request: the token must carry a scope that
grants the action at all. `evaluate` is the rule criterion `scopes`: any of the listed scopes.
"""

from __future__ import annotations

from ..scopes import GRANTING_SCOPES
from .base import Facts, Result

__all__ = ["GRANTING_SCOPES", "check_token", "evaluate", "granting_levels"]


def granting_levels(facts: Facts) -> frozenset[str]:
    """SMART levels (`user`, `patient`, `system`) whose scopes grant this action."""
    granted = GRANTING_SCOPES.get(facts.action, frozenset()) & facts.principal.scopes
    return frozenset(s.split("/", 1)[0] for s in granted)


def check_token(facts: Facts) -> Result:
    if facts.action not in GRANTING_SCOPES:
        # Administrative actions have no SMART scope; the rules (roles) decide them.
        return True, "scope-not-required"
    if granting_levels(facts):
        return True, "scope-ok"
    return False, "scope-missing"


def evaluate(spec: tuple[str, ...], facts: Facts) -> Result:
    if facts.principal.scopes & set(spec):
        return True, "scope-ok"
    return False, "scope-unmatched"
