"""`break_glass`: the caller holds an unexpired break-glass grant for this very study."""

from __future__ import annotations

from .base import Facts, Result


def evaluate(spec: bool, facts: Facts) -> Result:
    held = facts.study is not None and facts.study.study_instance_uid in facts.grants
    if held == spec:
        return True, "break-glass-ok" if spec else "break-glass-absent"
    return False, "break-glass-missing" if spec else "break-glass-held"
