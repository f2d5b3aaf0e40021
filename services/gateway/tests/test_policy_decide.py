"""`decide()`: deny beats allow, no match is deny, token criteria first, step-up last."""

from __future__ import annotations

import pytest
from dicomweb_gateway.context import Action
from dicomweb_gateway.policy import decide
from policy_helpers import LEGAL_HOLD, NORTH, NOW, SOUTH, UNKNOWN, VIP, policy_from, principal

SMALL = policy_from(
    """
    version: 1
    labels: [site:north, site:south, vip, legal-hold]
    rules:
      - id: no-vip
        effect: deny
        actions: [read]
        labels_any: [vip]
        unless:
          - roles: [vip-access]
          - break_glass: true
      - id: north
        effect: allow
        actions: [read, delete]
        roles: [clinician]
        labels_any: [site:north]
      - id: hold
        effect: deny
        actions: [delete]
        labels_any: [legal-hold]
      - id: everyone-deletes-south
        effect: allow
        actions: [delete]
        labels_any: [site:south]
    step_up:
      - id: fresh-delete
        actions: [delete]
        acr: urn:zt:acr:mfa
        max_age: 300
    """
)

TOKEN_OK = ("scope-ok", "study-scope-none", "patient-context-none", "study-known")
READ = "user/ImagingStudy.rs"
DELETE = "user/ImagingStudy.d"


@pytest.mark.control("AP-1")
@pytest.mark.parametrize(
    ("who", "action", "study", "grants", "expected"),
    [
        (
            principal(READ, roles="clinician"),
            Action.READ,
            NORTH,
            (),
            (True, (*TOKEN_OK, "action-ok", "role-ok", "label-ok", "allow:north")),
        ),
        # no rule matches: deny
        (
            principal(READ, roles="clinician"),
            Action.READ,
            SOUTH,
            (),
            (False, (*TOKEN_OK, "no-rule-matched")),
        ),
        # deny beats allow, whatever the order of the rules
        (
            principal(READ, roles="clinician"),
            Action.READ,
            VIP,
            (),
            (False, (*TOKEN_OK, "action-ok", "label-ok", "deny:no-vip")),
        ),
        # an exemption lifts the deny; the allow rule still has to match
        (
            principal(READ, roles="clinician vip-access"),
            Action.READ,
            VIP,
            (),
            (True, (*TOKEN_OK, "action-ok", "role-ok", "label-ok", "allow:north")),
        ),
        (
            principal(READ, roles="clinician"),
            Action.READ,
            VIP,
            (VIP.study_instance_uid,),
            (True, (*TOKEN_OK, "action-ok", "role-ok", "label-ok", "allow:north")),
        ),
        # unknown study: nobody
        (
            principal(READ, roles="clinician"),
            Action.READ,
            UNKNOWN,
            (),
            (False, ("scope-ok", "study-scope-none", "patient-context-none", "study-unknown")),
        ),
        # token criteria come first: a missing scope is never rescued by a rule
        (
            principal("openid", roles="clinician"),
            Action.READ,
            NORTH,
            (),
            (False, ("scope-missing",)),
        ),
        (
            principal(f"{READ} study:{SOUTH.study_instance_uid}", roles="clinician"),
            Action.READ,
            NORTH,
            (),
            (False, ("scope-ok", "study-scope-unauthorized")),
        ),
        # legal hold denies delete even though another rule allows it
        (
            principal(DELETE, acr="urn:zt:acr:mfa"),
            Action.DELETE,
            LEGAL_HOLD,
            (),
            (False, (*TOKEN_OK, "action-ok", "label-ok", "deny:hold")),
        ),
        (
            principal(DELETE, acr="urn:zt:acr:mfa", auth_age=20),
            Action.DELETE,
            SOUTH,
            (),
            (
                True,
                (
                    *TOKEN_OK,
                    "action-ok",
                    "label-ok",
                    "allow:everyone-deletes-south",
                    "acr-ok",
                    "auth-age-ok",
                ),
            ),
        ),
    ],
)
def test_decide(who, action, study, grants, expected) -> None:  # type: ignore[no-untyped-def]
    decision = decide(who, action, study, SMALL, NOW, grants)
    assert (decision.allow, decision.reasons) == expected
    assert decision.acr_values is None and decision.max_age is None


@pytest.mark.control("ID-3")
def test_step_up_acr_challenge() -> None:
    decision = decide(principal(DELETE, acr="urn:zt:acr:pwd"), Action.DELETE, SOUTH, SMALL, NOW)
    assert not decision.allow
    assert decision.reasons[-2:] == ("acr-insufficient", "auth-age-ok")
    assert decision.acr_values == "urn:zt:acr:mfa urn:zt:acr:phr"
    assert decision.max_age == 300


@pytest.mark.control("ID-4")
def test_step_up_age_challenge() -> None:
    stale = principal(DELETE, acr="urn:zt:acr:phr", auth_age=301)
    decision = decide(stale, Action.DELETE, SOUTH, SMALL, NOW)
    assert not decision.allow
    assert decision.reasons[-2:] == ("acr-ok", "auth-age-exceeded")
    assert decision.max_age == 300


def test_step_up_applies_before_the_study_is_known() -> None:
    decision = decide(principal(DELETE), Action.DELETE, None, SMALL, NOW)
    assert (decision.allow, decision.reasons) == (
        False,
        (
            "scope-ok",
            "study-scope-none",
            "patient-context-none",
            "study-known",
            "acr-insufficient",
            "auth-age-ok",
        ),
    )


def test_step_up_only_for_allowed_requests() -> None:
    # A denied request is denied outright: no challenge that would invite a pointless re-login.
    decision = decide(principal(DELETE), Action.DELETE, NORTH, SMALL, NOW)
    assert not decision.allow
    assert decision.reasons[-1] == "no-rule-matched"
    assert decision.acr_values is None


def test_unauthenticated() -> None:
    decision = decide(None, Action.READ, NORTH, SMALL, NOW)
    assert (decision.allow, decision.reasons) == (False, ("unauthenticated",))


def test_empty_policy_denies_everything() -> None:
    empty = policy_from("version: 1\nlabels: []\nrules: []\n")
    for action in Action:
        assert not decide(principal(f"{READ} {DELETE}"), action, NORTH, empty, NOW).allow
