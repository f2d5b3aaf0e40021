"""Rule criteria, one table per criterion module: (spec, facts) -> (matched, reason)."""

from __future__ import annotations

import pytest
from dicomweb_gateway.context import Action
from dicomweb_gateway.policy.criteria import (
    Facts,
    action,
    break_glass,
    client,
    group,
    label,
    patient,
    role,
    scope,
    study_known,
)
from policy_helpers import LEGAL_HOLD, NORTH, NOW, UNKNOWN, UNLABELLED, VIP, principal


def facts(study: object = NORTH, grants: frozenset[str] = frozenset(), **kw: object) -> Facts:
    return Facts(principal(**kw), Action.READ, study, NOW, grants)  # type: ignore[arg-type]


def test_action() -> None:
    assert action.evaluate((Action.READ, Action.SEARCH), facts()) == (True, "action-ok")
    assert action.evaluate((Action.DELETE,), facts()) == (False, "action-unmatched")


def test_role() -> None:
    assert role.evaluate(("clinician",), facts(roles="clinician")) == (True, "role-ok")
    assert role.evaluate(("clinician",), facts(roles="auditor")) == (False, "role-unauthorized")
    assert role.evaluate(("clinician",), facts(roles="Clinician")) == (False, "role-unauthorized")


def test_group() -> None:
    assert group.evaluate(("/site-north",), facts(groups="/site-north")) == (True, "group-ok")
    assert group.evaluate(("/site-north",), facts(groups="/site-north/x")) == (
        False,
        "group-unauthorized",
    )


def test_client() -> None:
    assert client.evaluate(("ai-node",), facts(client_id="ai-node")) == (True, "client-ok")
    assert client.evaluate(("ai-node",), facts()) == (False, "client-unauthorized")


def test_scope_rule() -> None:
    assert scope.evaluate(("system/ImagingStudy.c",), facts(scopes="system/ImagingStudy.c")) == (
        True,
        "scope-ok",
    )
    assert scope.evaluate(("system/ImagingStudy.c",), facts()) == (False, "scope-unmatched")


@pytest.mark.control("DA-2")
@pytest.mark.parametrize(
    ("evaluate", "spec", "study", "expected"),
    [
        (label.evaluate_any, ("site:north", "site:south"), NORTH, (True, "label-ok")),
        (label.evaluate_any, ("site:south",), NORTH, (False, "label-unmatched")),
        (label.evaluate_any, ("site:north",), UNKNOWN, (False, "label-unmatched")),
        (label.evaluate_all, ("site:north", "vip"), VIP, (True, "label-ok")),
        (label.evaluate_all, ("site:north", "vip"), NORTH, (False, "label-unmatched")),
        (label.evaluate_none, ("legal-hold",), NORTH, (True, "label-absent")),
        (label.evaluate_none, ("legal-hold",), LEGAL_HOLD, (False, "label-present")),
        (label.evaluate_none, ("legal-hold",), UNKNOWN, (False, "label-present")),
        (label.evaluate_unlabelled, True, UNLABELLED, (True, "unlabelled-ok")),
        (label.evaluate_unlabelled, True, NORTH, (False, "unlabelled-unmatched")),
        (label.evaluate_unlabelled, True, UNKNOWN, (False, "unlabelled-unmatched")),
        (label.evaluate_any, ("site:north",), None, (False, "label-unmatched")),
    ],
)
def test_labels(evaluate: object, spec: object, study: object, expected: object) -> None:
    assert evaluate(spec, facts(study)) == expected  # type: ignore[operator]


def test_patient_own() -> None:
    assert patient.evaluate("own", facts(patient="ZT-P001")) == (True, "patient-ok")
    assert patient.evaluate("own", facts(patient="ZT-P002")) == (False, "patient-mismatch")
    assert patient.evaluate("own", facts()) == (False, "patient-claim-missing")


@pytest.mark.control("DA-2")
def test_break_glass() -> None:
    held = frozenset({VIP.study_instance_uid})
    assert break_glass.evaluate(True, facts(VIP, held)) == (True, "break-glass-ok")
    assert break_glass.evaluate(True, facts(NORTH, held)) == (False, "break-glass-missing")
    assert break_glass.evaluate(True, facts(None, held)) == (False, "break-glass-missing")
    assert break_glass.evaluate(False, facts(NORTH, held)) == (True, "break-glass-absent")


def test_study_known_rule() -> None:
    assert study_known.evaluate(False, facts(UNKNOWN)) == (True, "study-new-ok")
    assert study_known.evaluate(False, facts(NORTH)) == (False, "study-known-unmatched")
    assert study_known.evaluate(True, facts(NORTH)) == (True, "study-known-ok")
