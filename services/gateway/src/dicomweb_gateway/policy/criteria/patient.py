"""Patient context: `patient/` scopes reach only the studies of the token's `patient` claim.

`check_token` applies to every request whose action is granted only by a `patient/` scope;
`evaluate` is the rule criterion `patient: own`.
"""

from __future__ import annotations

from .base import Facts, Result
from .scope import granting_levels


def _own(facts: Facts) -> Result:
    claim = facts.principal.patient
    if not claim:
        return False, "patient-claim-missing"
    if facts.study is None:
        return True, "patient-pending"
    if facts.study.known and facts.study.patient_id == claim:
        return True, "patient-ok"
    return False, "patient-mismatch"


def check_token(facts: Facts) -> Result:
    levels = granting_levels(facts)
    if levels != frozenset({"patient"}):
        return True, "patient-context-none"
    return _own(facts)


def evaluate(spec: str, facts: Facts) -> Result:
    return _own(facts)
