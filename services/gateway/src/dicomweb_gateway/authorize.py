"""Authorization hooks the DICOMweb routes call (owned by the per-study policy work).

Every route resolves the study that really owns the object first (via the archive adapter), then
calls exactly one of these. They raise a `GatewayError` (403 insufficient_scope, or 401
insufficient_user_authentication per RFC 9470) and record the decision in the context.

This first version only checks operation scopes and study-narrowing scopes; the policy engine
(`policy/`, labels, patient context, break-glass) replaces the body of `Authorizer` behind the
same interface. It fails closed: anything it does not recognise is denied.
"""

from __future__ import annotations

from collections.abc import Iterable

from .context import Action, Decision, RequestContext
from .errors import GatewayError, insufficient_scope

# SMART v2 scopes that grant each action (ARCHITECTURE section 5).
_SCOPES: dict[Action, frozenset[str]] = {
    Action.SEARCH: frozenset(
        {"user/ImagingStudy.rs", "patient/ImagingStudy.rs", "system/ImagingStudy.rs"}
    ),
    Action.READ: frozenset(
        {"user/ImagingStudy.rs", "patient/ImagingStudy.rs", "system/ImagingStudy.rs"}
    ),
    Action.STORE: frozenset({"user/ImagingStudy.c", "system/ImagingStudy.c"}),
    Action.DELETE: frozenset({"user/ImagingStudy.d"}),
}


class Authorizer:
    """Per-application authorizer; one instance lives on `app.state.authorizer`."""

    async def check_action(self, ctx: RequestContext, action: Action) -> None:
        """May this caller perform `action` at all (before any study is known)?"""
        decision = self._scope_decision(ctx, action)
        self._enforce(ctx, decision)

    async def check_study(
        self, ctx: RequestContext, action: Action, study_instance_uid: str
    ) -> None:
        """May this caller perform `action` on this study? Raises when not."""
        decision = self._scope_decision(ctx, action)
        narrowed = ctx.principal.study_scopes if ctx.principal else frozenset()
        if decision.allow and narrowed and study_instance_uid not in narrowed:
            decision = Decision(False, ("study-scope-unauthorized",))
        self._enforce(ctx, decision)

    async def permitted_studies(
        self, ctx: RequestContext, action: Action, study_instance_uids: Iterable[str]
    ) -> set[str]:
        """The subset of studies this caller may see (QIDO filtering); never raises."""
        uids = set(study_instance_uids)
        if not self._scope_decision(ctx, action).allow:
            return set()
        narrowed = ctx.principal.study_scopes if ctx.principal else frozenset()
        return uids & narrowed if narrowed else uids

    async def on_stored(self, ctx: RequestContext, study_instance_uids: Iterable[str]) -> None:
        """Called after a successful STOW so ingest rules can label new studies."""

    def _scope_decision(self, ctx: RequestContext, action: Action) -> Decision:
        if ctx.principal is None:
            return Decision(False, ("unauthenticated",))
        granted = _SCOPES.get(action, frozenset()) & ctx.principal.scopes
        return Decision(True, ("scope-ok",)) if granted else Decision(False, ("scope-missing",))

    @staticmethod
    def _enforce(ctx: RequestContext, decision: Decision) -> None:
        """The one place a decision becomes an HTTP error."""
        ctx.decisions.append(decision)
        if decision.allow:
            return
        raise _error_for(decision)


def _error_for(decision: Decision) -> GatewayError:
    from .errors import step_up

    if decision.acr_values or decision.max_age is not None:
        return step_up(",".join(decision.reasons), decision.acr_values, decision.max_age)
    return insufficient_scope(",".join(decision.reasons))
