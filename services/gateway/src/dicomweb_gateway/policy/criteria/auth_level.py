"""Step-up: the login's `acr` must be at least the required level (RFC 9470, ID-3)."""

from __future__ import annotations

from ..model import Policy
from .base import Facts, Result


def evaluate(required: str, facts: Facts, policy: Policy) -> Result:
    if policy.acr_rank(facts.principal.acr) >= policy.acr_rank(required):
        return True, "acr-ok"
    return False, "acr-insufficient"


def acceptable(required: str, policy: Policy) -> str:
    """`acr_values` for the challenge: the required level first, then every stronger one."""
    return " ".join(policy.acr_levels[policy.acr_rank(required) :])
