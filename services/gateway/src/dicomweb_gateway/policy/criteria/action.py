"""`actions`: the request's action is one of these."""

from __future__ import annotations

from ...context import Action
from .base import Facts, Result


def evaluate(spec: tuple[Action, ...], facts: Facts) -> Result:
    if facts.action in spec:
        return True, "action-ok"
    return False, "action-unmatched"
