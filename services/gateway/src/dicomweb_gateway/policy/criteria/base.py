"""What every criterion sees: the facts of one request, gathered before `decide()` runs."""

from __future__ import annotations

from dataclasses import dataclass

from ...context import Action, Principal

# A criterion answers (matched, reason). Reasons come in pairs such as `role-ok` /
# `role-unauthorized` so the audit record says which condition held or failed.
Result = tuple[bool, str]


@dataclass(frozen=True)
class StudyFacts:
    """What the policy store knows about one study (`known=False`: not in the store)."""

    study_instance_uid: str
    patient_id: str | None = None
    labels: frozenset[str] = frozenset()
    known: bool = True


@dataclass(frozen=True)
class Facts:
    principal: Principal
    action: Action
    study: StudyFacts | None  # None: the study is not known yet (check_action)
    now: float
    grants: frozenset[str] = frozenset()  # studies with an active break-glass grant
