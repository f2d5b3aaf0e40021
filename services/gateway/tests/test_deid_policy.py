"""A de-identified view as a policy grant (DA-1): `view: deidentified` on an allow rule."""

from __future__ import annotations

import pytest
from dicomweb_gateway.context import Action, Principal
from dicomweb_gateway.policy import PolicyError, StudyFacts, decide
from dicomweb_gateway.policy.loader import parse_policy

pytestmark = pytest.mark.control("DA-1")

POLICY = {
    "version": 1,
    "labels": ["trial"],
    "rules": [
        {"id": "identified", "effect": "allow", "actions": ["read"], "roles": ["investigator"],
         "labels_any": ["trial"]},
        {"id": "deid", "effect": "allow", "actions": ["search", "read"], "roles": ["analyst"],
         "labels_any": ["trial"], "view": "deidentified", "project": "trial-42"},
    ],
}  # fmt: skip
TRIAL = StudyFacts("1.2.3", labels=frozenset({"trial"}), patient_id="P1", known=True)


def who(*roles: str) -> Principal:
    return Principal("u", "iss", "c", frozenset({"user/ImagingStudy.rs"}), frozenset(roles))


@pytest.mark.parametrize(
    ("roles", "project"),
    [
        (("investigator",), None),
        (("analyst",), "trial-42"),
        (("investigator", "analyst"), "trial-42"),
    ],
)
def test_the_deidentified_grant_wins_over_an_identified_one(
    roles: tuple[str, ...], project: str | None
) -> None:
    decision = decide(who(*roles), Action.READ, TRIAL, parse_policy(POLICY), 0.0)
    assert decision.allow
    assert decision.deidentified_project == project


def test_a_refusal_carries_no_view() -> None:
    decision = decide(who("nobody"), Action.READ, TRIAL, parse_policy(POLICY), 0.0)
    assert not decision.allow


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"project": None}, "project: required"),
        ({"effect": "deny"}, "only on allow rules"),
        ({"actions": ["read", "delete"]}, "search and read only"),
        ({"view": "identified"}, "only with view: deidentified"),
    ],
)
def test_invalid_views_are_refused_at_load(change: dict[str, object], problem: str) -> None:
    rules = [dict(POLICY["rules"][1]) | change]  # type: ignore[call-overload]
    with pytest.raises(PolicyError) as error:
        parse_policy(POLICY | {"rules": rules})
    assert problem in str(error.value)
