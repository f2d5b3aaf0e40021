"""Is the study in the policy store? Unknown studies are visible to nobody (fail closed).

`check_token` applies to every request that names a study: only a store (STOW of a new study)
may touch a study the store does not know; `evaluate` is the rule criterion `study_known`.
"""

from __future__ import annotations

from ...context import Action
from .base import Facts, Result


def check_token(facts: Facts) -> Result:
    if facts.study is None or facts.study.known:
        return True, "study-known"
    if facts.action is Action.STORE:
        return True, "study-new"
    return False, "study-unknown"


def evaluate(spec: bool, facts: Facts) -> Result:
    known = facts.study is not None and facts.study.known
    if known == spec:
        return True, "study-known-ok" if spec else "study-new-ok"
    return False, "study-known-unmatched"
