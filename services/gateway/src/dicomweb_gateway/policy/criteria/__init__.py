"""One criterion per module, each answering (matched, paired reason).

`RULE_CRITERIA` maps a field of `model.Criteria` to its evaluator; `TOKEN_CRITERIA` run on every
request before any rule, in this order (what the token itself allows can never be widened).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import (
    action,
    break_glass,
    client,
    group,
    label,
    patient,
    role,
    scope,
    study_known,
    study_scope,
)
from .base import Facts, Result, StudyFacts

RULE_CRITERIA: dict[str, Callable[[Any, Facts], Result]] = {
    "actions": action.evaluate,
    "scopes": scope.evaluate,
    "roles": role.evaluate,
    "groups": group.evaluate,
    "clients": client.evaluate,
    "labels_any": label.evaluate_any,
    "labels_all": label.evaluate_all,
    "labels_none": label.evaluate_none,
    "unlabelled": label.evaluate_unlabelled,
    "patient": patient.evaluate,
    "break_glass": break_glass.evaluate,
    "study_known": study_known.evaluate,
}

TOKEN_CRITERIA: tuple[Callable[[Facts], Result], ...] = (
    scope.check_token,
    study_scope.check_token,
    patient.check_token,
    study_known.check_token,
)

__all__ = ["RULE_CRITERIA", "TOKEN_CRITERIA", "Facts", "Result", "StudyFacts"]
