"""Step-up criteria: authentication level (acr) and freshness (auth_time), RFC 9470."""

from __future__ import annotations

import pytest
from dicomweb_gateway.context import Action
from dicomweb_gateway.policy import load_policy
from dicomweb_gateway.policy.criteria import Facts, auth_age, auth_level
from policy_helpers import DEMO_POLICY, NORTH, NOW, principal

POLICY = load_policy(DEMO_POLICY)


@pytest.mark.control("ID-3")
@pytest.mark.parametrize(
    ("acr", "required", "expected"),
    [
        ("urn:zt:acr:pwd", "urn:zt:acr:mfa", (False, "acr-insufficient")),
        ("urn:zt:acr:mfa", "urn:zt:acr:mfa", (True, "acr-ok")),
        ("urn:zt:acr:phr", "urn:zt:acr:mfa", (True, "acr-ok")),
        (None, "urn:zt:acr:pwd", (False, "acr-insufficient")),
        ("urn:other:gold", "urn:zt:acr:pwd", (False, "acr-insufficient")),
    ],
)
def test_acr(acr: str | None, required: str, expected: tuple[bool, str]) -> None:
    facts = Facts(principal(acr=acr), Action.DELETE, NORTH, NOW)
    assert auth_level.evaluate(required, facts, POLICY) == expected


def test_acceptable_lists_required_and_stronger() -> None:
    assert auth_level.acceptable("urn:zt:acr:mfa", POLICY) == "urn:zt:acr:mfa urn:zt:acr:phr"


@pytest.mark.control("ID-4")
@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (0, (True, "auth-age-ok")),
        (300, (True, "auth-age-ok")),
        (301, (False, "auth-age-exceeded")),
        (None, (False, "auth-age-exceeded")),
        (-60, (False, "auth-age-exceeded")),  # auth_time in the future
    ],
)
def test_auth_age(age: float | None, expected: tuple[bool, str]) -> None:
    facts = Facts(principal(auth_age=age), Action.DELETE, NORTH, NOW)
    assert auth_age.evaluate(300, facts) == expected
