"""Token criteria: operation scopes, study narrowing, patient context, known study."""

from __future__ import annotations

import pytest
from dicomweb_gateway.context import Action
from dicomweb_gateway.policy.criteria import Facts, patient, scope, study_known, study_scope
from policy_helpers import NORTH, NOW, SOUTH, UNKNOWN, principal


@pytest.mark.control("AP-1")
@pytest.mark.parametrize(
    ("scopes", "action", "expected"),
    [
        ("user/ImagingStudy.rs", Action.READ, (True, "scope-ok")),
        ("user/ImagingStudy.rs", Action.SEARCH, (True, "scope-ok")),
        ("user/ImagingStudy.rs", Action.STORE, (False, "scope-missing")),
        ("user/ImagingStudy.rs", Action.DELETE, (False, "scope-missing")),
        ("system/ImagingStudy.c", Action.STORE, (True, "scope-ok")),
        ("system/ImagingStudy.c", Action.READ, (False, "scope-missing")),
        ("user/ImagingStudy.d", Action.DELETE, (True, "scope-ok")),
        ("patient/ImagingStudy.rs", Action.READ, (True, "scope-ok")),
        ("openid profile", Action.SEARCH, (False, "scope-missing")),
        ("USER/IMAGINGSTUDY.RS", Action.READ, (False, "scope-missing")),  # exact match only
        ("openid", Action.ADMIN, (True, "scope-not-required")),
    ],
)
def test_scope(scopes: str, action: Action, expected: tuple[bool, str]) -> None:
    assert scope.check_token(Facts(principal(scopes), action, NORTH, NOW)) == expected


@pytest.mark.control("AP-1")
@pytest.mark.parametrize(
    ("scopes", "study", "expected"),
    [
        ("user/ImagingStudy.rs", NORTH, (True, "study-scope-none")),
        (f"user/ImagingStudy.rs study:{NORTH.study_instance_uid}", NORTH, (True, "study-scope-ok")),
        (
            f"user/ImagingStudy.rs study:{NORTH.study_instance_uid}",
            SOUTH,
            (False, "study-scope-unauthorized"),
        ),
        (
            f"user/ImagingStudy.rs study:{NORTH.study_instance_uid}",
            None,
            (True, "study-scope-pending"),
        ),
        ("user/ImagingStudy.rs study:1.2.826.0.1.*", NORTH, (False, "study-scope-unauthorized")),
    ],
)
def test_study_scope(scopes: str, study: object, expected: tuple[bool, str]) -> None:
    facts = Facts(principal(scopes), Action.READ, study, NOW)  # type: ignore[arg-type]
    assert study_scope.check_token(facts) == expected


@pytest.mark.parametrize(
    ("scopes", "claim", "study", "expected"),
    [
        ("patient/ImagingStudy.rs", "ZT-P001", NORTH, (True, "patient-ok")),
        ("patient/ImagingStudy.rs", "ZT-P001", SOUTH, (False, "patient-mismatch")),
        ("patient/ImagingStudy.rs", None, NORTH, (False, "patient-claim-missing")),
        ("patient/ImagingStudy.rs", "ZT-P001", UNKNOWN, (False, "patient-mismatch")),
        ("patient/ImagingStudy.rs", "ZT-P001", None, (True, "patient-pending")),
        # a user-level scope is not limited to one patient
        (
            "patient/ImagingStudy.rs user/ImagingStudy.rs",
            None,
            SOUTH,
            (True, "patient-context-none"),
        ),
    ],
)
def test_patient_context(
    scopes: str, claim: str | None, study: object, expected: tuple[bool, str]
) -> None:
    facts = Facts(principal(scopes, patient=claim), Action.READ, study, NOW)  # type: ignore[arg-type]
    assert patient.check_token(facts) == expected


@pytest.mark.parametrize(
    ("action", "study", "expected"),
    [
        (Action.READ, NORTH, (True, "study-known")),
        (Action.READ, UNKNOWN, (False, "study-unknown")),
        (Action.SEARCH, UNKNOWN, (False, "study-unknown")),
        (Action.DELETE, UNKNOWN, (False, "study-unknown")),
        (Action.BREAK_GLASS, UNKNOWN, (False, "study-unknown")),
        (Action.STORE, UNKNOWN, (True, "study-new")),
    ],
)
def test_study_known(action: Action, study: object, expected: tuple[bool, str]) -> None:
    facts = Facts(principal(), action, study, NOW)  # type: ignore[arg-type]
    assert study_known.check_token(facts) == expected
