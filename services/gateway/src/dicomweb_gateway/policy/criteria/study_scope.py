"""Study narrowing: a token with `study:<StudyInstanceUID>` scopes reaches only those studies.

A token criterion, applied to every request before any rule: no rule and no break-glass grant
can widen what the token itself was narrowed to.
"""

from __future__ import annotations

from .base import Facts, Result


def check_token(facts: Facts) -> Result:
    narrowed = facts.principal.study_scopes
    if not narrowed:
        return True, "study-scope-none"
    if facts.study is None:
        # Before the study is known the token may still be used, but only for its studies.
        return True, "study-scope-pending"
    if facts.study.study_instance_uid in narrowed:
        return True, "study-scope-ok"
    return False, "study-scope-unauthorized"
