"""The demo policy (config/policy.yaml) against the demo users and studies of docs/internals.md.

The same matrix runs end to end in tests/test_authorization.py with real tokens; this one pins
the policy itself, without a stack.
"""

from __future__ import annotations

import pytest
from dicomweb_gateway.context import Action, Principal
from dicomweb_gateway.policy import decide, load_policy
from policy_helpers import (
    DEMO_POLICY,
    LEGAL_HOLD,
    NORTH,
    NOW,
    SOUTH,
    TRIAL,
    UNKNOWN,
    UNLABELLED,
    VIP,
    principal,
)

POLICY = load_policy(DEMO_POLICY)
RS, C, D = "user/ImagingStudy.rs", "user/ImagingStudy.c", "user/ImagingStudy.d"
MFA, PWD = "urn:zt:acr:mfa", "urn:zt:acr:pwd"

USERS: dict[str, Principal] = {
    "north-clinician": principal(f"{RS} {C}", "clinician", "/site-north", acr=MFA),
    "north-clinician-pwd": principal(RS, "clinician", "/site-north", acr=PWD),
    "south-clinician": principal(RS, "clinician", "/site-south", acr=MFA),
    "radiologist": principal(f"{RS} {D}", "radiologist", "/site-north /site-south", acr=MFA),
    "radiologist-stale": principal(D, "radiologist", "/site-south", acr=MFA, auth_age=900),
    "researcher": principal(RS, "researcher", "/research/trial-42"),
    "auditor": principal(f"{RS} {C} {D}", "auditor", acr=MFA),
    "admin": principal(RS, "admin", acr=MFA),
    "er-physician": principal(RS, "clinician break-glass", "/site-north", acr=MFA),
    "vip-reader": principal(RS, "clinician vip-access", "/site-north", acr=MFA),
    "portal-patient": principal("patient/ImagingStudy.rs", "patient", patient="ZT-P001"),
    "portal-patient-widened": principal(
        "patient/ImagingStudy.rs", "patient clinician", "/site-south", patient="ZT-P001"
    ),
    "modality-ct1": principal("system/ImagingStudy.c", client_id="modality-ct1", acr=None),
    "modality-ct1-greedy": principal(
        "system/ImagingStudy.c system/ImagingStudy.rs", client_id="modality-ct1", acr=None
    ),
    "ai-node": principal("system/ImagingStudy.rs", client_id="ai-node", acr=None),
    "north-share-link": principal(
        f"{RS} study:{TRIAL.study_instance_uid}", "clinician", "/site-north", acr=MFA
    ),
}

R, S, ST, DEL = Action.READ, Action.SEARCH, Action.STORE, Action.DELETE
CASES = [
    # two sites
    ("north-clinician", R, NORTH, True),
    ("north-clinician", S, NORTH, True),
    ("north-clinician", R, SOUTH, False),
    ("north-clinician", S, SOUTH, False),
    ("south-clinician", R, SOUTH, True),
    ("south-clinician", R, LEGAL_HOLD, True),
    ("south-clinician", R, NORTH, False),
    ("radiologist", R, NORTH, True),
    ("radiologist", R, SOUTH, True),
    # unknown and unlabelled studies: nobody
    ("radiologist", R, UNKNOWN, False),
    ("radiologist", R, UNLABELLED, False),
    ("admin", R, NORTH, False),
    # research project: only the trial's studies
    ("researcher", R, TRIAL, True),
    ("researcher", S, TRIAL, True),
    ("researcher", R, NORTH, False),
    # VIP: role or break-glass, MFA
    ("north-clinician", R, VIP, False),
    ("radiologist", R, VIP, False),
    ("vip-reader", R, VIP, True),
    ("er-physician", R, VIP, False),  # until a grant exists (see test_break_glass_grant)
    # legal hold: never deleted, even by a radiologist of that site with fresh MFA
    ("radiologist", DEL, LEGAL_HOLD, False),
    ("radiologist", DEL, SOUTH, True),
    ("radiologist", DEL, NORTH, True),
    ("north-clinician", DEL, NORTH, False),  # no .d scope
    # auditor: no image access at all, whatever the scopes
    ("auditor", R, NORTH, False),
    ("auditor", S, SOUTH, False),
    ("auditor", ST, UNKNOWN, False),
    ("auditor", DEL, SOUTH, False),
    # modality: stores, never reads back (not even with a read scope)
    ("modality-ct1", ST, UNKNOWN, True),
    ("modality-ct1", ST, NORTH, True),
    ("modality-ct1", ST, LEGAL_HOLD, False),
    ("modality-ct1", R, NORTH, False),
    ("modality-ct1", S, NORTH, False),
    ("modality-ct1-greedy", R, NORTH, False),
    # AI node: research studies only
    ("ai-node", R, TRIAL, True),
    ("ai-node", R, NORTH, False),
    # clinicians store new studies and into their site's studies
    ("north-clinician", ST, UNKNOWN, True),
    ("north-clinician", ST, NORTH, True),
    ("north-clinician", ST, SOUTH, False),
    # patient portal: own studies only, extra roles do not widen a patient/ token
    ("portal-patient", R, NORTH, True),
    ("portal-patient", S, NORTH, True),
    ("portal-patient", R, SOUTH, False),
    ("portal-patient", R, VIP, False),
    ("portal-patient-widened", R, SOUTH, False),
    # study:<uid> narrows to exactly that study
    ("north-share-link", R, TRIAL, True),
    ("north-share-link", R, NORTH, False),
]


@pytest.mark.control("AP-1")
@pytest.mark.control("DA-2")
@pytest.mark.parametrize(
    ("user", "action", "study", "allowed"),
    CASES,
    ids=[f"{u}-{a}-{s.patient_id}-{'/'.join(sorted(s.labels))}" for u, a, s, _ in CASES],
)
def test_demo_matrix(user: str, action: Action, study: object, allowed: bool) -> None:
    decision = decide(USERS[user], action, study, POLICY, NOW)  # type: ignore[arg-type]
    assert decision.allow is allowed, decision.reasons


@pytest.mark.control("DA-2")
def test_break_glass_grant_opens_one_vip_study() -> None:
    er = USERS["er-physician"]
    grants = {VIP.study_instance_uid}
    assert decide(er, R, VIP, POLICY, NOW, grants).allow
    assert not decide(er, DEL, VIP, POLICY, NOW, grants).allow
    other_vip = VIP.__class__("1.2.826.0.1.99", "ZT-P004", VIP.labels)
    assert not decide(er, R, other_vip, POLICY, NOW, grants).allow


@pytest.mark.control("ID-3")
def test_vip_read_needs_mfa() -> None:
    weak = principal(RS, "clinician vip-access", "/site-north", acr=PWD)
    decision = decide(weak, R, VIP, POLICY, NOW)
    assert not decision.allow
    assert decision.acr_values == "urn:zt:acr:mfa urn:zt:acr:phr"
    assert decision.reasons[-1] == "acr-insufficient"


@pytest.mark.control("ID-4")
@pytest.mark.parametrize("action", [DEL, Action.BREAK_GLASS, Action.ADMIN])
def test_destructive_actions_need_fresh_mfa(action: Action) -> None:
    roles = "radiologist break-glass admin"
    stale = principal(D, roles, "/site-south", acr=MFA, auth_age=301)
    fresh = principal(D, roles, "/site-south", acr=MFA, auth_age=30)
    weak = principal(D, roles, "/site-south", acr=PWD, auth_age=30)
    assert decide(fresh, action, SOUTH, POLICY, NOW).allow
    for who, reason in ((stale, "auth-age-exceeded"), (weak, "acr-insufficient")):
        decision = decide(who, action, SOUTH, POLICY, NOW)
        assert not decision.allow
        assert reason in decision.reasons
        assert decision.max_age == 300
        assert decision.acr_values == "urn:zt:acr:mfa urn:zt:acr:phr"


def test_break_glass_needs_the_role() -> None:
    assert not decide(USERS["north-clinician"], Action.BREAK_GLASS, VIP, POLICY, NOW).allow
    assert decide(USERS["er-physician"], Action.BREAK_GLASS, VIP, POLICY, NOW).allow
    assert not decide(USERS["er-physician"], Action.BREAK_GLASS, UNKNOWN, POLICY, NOW).allow
