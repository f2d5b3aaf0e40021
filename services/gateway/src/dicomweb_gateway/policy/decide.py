"""The one pure decision function (STYLE rule 1): deny beats allow; no match is deny.

Order: token criteria (scope, study narrowing, patient context, known study), then the rules
(any matching deny wins; otherwise the first matching allow), then step-up requirements of an
allowed request (RFC 9470: the strongest `acr` and the smallest `max_age` of every matching
requirement). With `study=None` (the study is not known yet) only the token criteria and the
step-up requirements that do not depend on the study are evaluated, except for the actions
that never concern a study (`STUDYLESS`: reading the audit trail, administration such as the
device inventory), which the rules decide on the caller alone: without that, an action on no
study would pass on the token's checks and step-up alone, whatever the caller's role.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..context import Action, Decision, Principal
from .criteria import RULE_CRITERIA, TOKEN_CRITERIA, Facts, StudyFacts, auth_age, auth_level
from .model import Criteria, Policy, Rule

# Actions decided on the caller alone when no study is named: their rules (roles, groups,
# clients) are evaluated without one. An admin action on a study is decided again with it.
STUDYLESS = frozenset({Action.AUDIT_READ, Action.ADMIN})


def decide(
    principal: Principal | None,
    action: Action,
    study: StudyFacts | None,
    policy: Policy,
    now: float,
    grants: Iterable[str] = (),
) -> Decision:
    if principal is None:
        return Decision(False, ("unauthenticated",))
    facts = Facts(principal, action, study, now, frozenset(grants))

    reasons: list[str] = []
    for criterion in TOKEN_CRITERIA:
        ok, reason = criterion(facts)
        reasons.append(reason)
        if not ok:
            return Decision(False, tuple(reasons))

    if study is not None or action in STUDYLESS:
        allowed: Rule | None = None
        deidentified: Rule | None = None
        for rule in policy.rules:
            matched, why = _rule_matches(rule, facts)
            if not matched:
                continue
            if rule.effect == "deny":
                return Decision(False, (*reasons, *why, f"deny:{rule.id}"))
            if allowed is None:
                allowed, allow_reasons = rule, why
            if rule.view == "deidentified" and deidentified is None:
                deidentified = rule
        if allowed is None:
            return Decision(False, (*reasons, "no-rule-matched"))
        reasons += [*allow_reasons, f"allow:{allowed.id}"]
        if deidentified is not None:
            # DA-1: a de-identified grant beats an identified one (the narrower view wins).
            reasons.append(f"deidentified:{deidentified.id}")
            decision = _step_up(facts, policy, reasons)
            decision.deidentified_project = deidentified.project
            decision.allow_secondary_capture = deidentified.allow_secondary_capture
            return decision

    return _step_up(facts, policy, reasons)


def _block_matches(block: Criteria, facts: Facts) -> tuple[bool, list[str]]:
    """All criteria given in `block` must match; stops at the first that does not."""
    why: list[str] = []
    for name in RULE_CRITERIA:  # a fixed order, so the reasons are reproducible
        spec = getattr(block, name)
        if spec is None:
            continue
        ok, reason = RULE_CRITERIA[name](spec, facts)
        why.append(reason)
        if not ok:
            return False, why
    return True, why


def _rule_matches(rule: Rule, facts: Facts) -> tuple[bool, list[str]]:
    matched, why = _block_matches(rule, facts)
    if not matched:
        return False, why
    for exemption in rule.unless:
        exempt, exempt_why = _block_matches(exemption, facts)
        if exempt:
            return False, exempt_why
    return True, why


def _step_up(facts: Facts, policy: Policy, reasons: list[str]) -> Decision:
    acr: str | None = None
    max_age: int | None = None
    for requirement in policy.step_up:
        matched, _ = _block_matches(requirement, facts)
        if not matched:
            continue
        if requirement.acr and policy.acr_rank(requirement.acr) > policy.acr_rank(acr):
            acr = requirement.acr
        if requirement.max_age is not None:
            max_age = requirement.max_age if max_age is None else min(max_age, requirement.max_age)

    failed = False
    if acr is not None:
        ok, reason = auth_level.evaluate(acr, facts, policy)
        reasons.append(reason)
        failed |= not ok
    if max_age is not None:
        ok, reason = auth_age.evaluate(max_age, facts)
        reasons.append(reason)
        failed |= not ok
    if failed:
        return Decision(
            False,
            tuple(reasons),
            acr_values=auth_level.acceptable(acr, policy) if acr else None,
            max_age=max_age,
        )
    return Decision(True, tuple(reasons))
