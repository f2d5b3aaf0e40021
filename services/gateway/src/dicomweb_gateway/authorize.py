"""Authorization hooks the DICOMweb routes call: the per-study policy enforcement point.

Every route resolves the study that really owns the object first (via the archive adapter), then
calls exactly one of these. They gather the facts (the policy store's labels and patient for the
study, the caller's break-glass grants), ask the pure `policy.decide()`, record the decision in
the context, and raise a `GatewayError` when it denies (403 insufficient_scope, or 401
insufficient_user_authentication per RFC 9470). `_enforce` is the only place a decision becomes
an HTTP error. Anything unknown is denied (fail closed): a study the store has not labelled yet
is visible to nobody.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .context import Action, Decision, RequestContext
from .errors import GatewayError, insufficient_scope, step_up
from .policy import Policy, PolicyError, StudyFacts, decide, load_policy
from .store import (
    ArchiveSource,
    ChangeFeedPoller,
    IngestRules,
    OrthancSource,
    PolicyStore,
    ingest,
    load_ingest_rules,
)

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)

NO_INGEST_RULES = IngestRules(version=1, rules=())


class Authorizer:
    """Per-application authorizer; one instance lives on `app.state.authorizer`."""

    def __init__(
        self,
        policy: Policy,
        store: PolicyStore,
        ingest_rules: IngestRules = NO_INGEST_RULES,
        source: ArchiveSource | None = None,
        change_feed_interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.store = store
        self.ingest_rules = ingest_rules
        self.source = source
        self.clock = clock
        self._interval = change_feed_interval_seconds
        self._poller: ChangeFeedPoller | None = None
        self._owned_archive: Any = None
        self._settings: Settings | None = None

    @classmethod
    def from_settings(cls, settings: Settings, archive: Any = None) -> Authorizer:
        """Load the policy and ingest rules (every problem in one `PolicyError`), migrate the
        policy store. `archive` is the gateway's `OrthancArchive`; without one, `start()`
        builds its own from the settings for the change feed."""
        policy, rules = load_policy_files(settings.policy.file, settings.policy.ingest_rules_file)
        store = PolicyStore(settings.database_url)
        store.migrate()
        authorizer = cls(
            policy,
            store,
            rules,
            OrthancSource(archive) if archive is not None else None,
            settings.policy.change_feed_interval_seconds,
        )
        authorizer._settings = settings
        return authorizer

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Start the change-feed poller (labels studies that reach the archive by DIMSE)."""
        if self.source is None and self._settings is not None:
            from .archive.orthanc import OrthancArchive

            self._owned_archive = OrthancArchive.from_settings(self._settings)
            self.source = OrthancSource(self._owned_archive)
        if self.source is not None and self._poller is None:
            self._poller = ChangeFeedPoller(
                self.source, self.store, self.ingest_rules, self._interval
            )
            self._poller.start()

    async def close(self) -> None:
        if self._poller is not None:
            await self._poller.stop()
            self._poller = None
        if self._owned_archive is not None:
            await self._owned_archive.close()
            self._owned_archive = None
        await self.store.close()

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[Authorizer]:
        await self.start()
        try:
            yield self
        finally:
            await self.close()

    async def ready(self) -> bool:
        """For /readyz: is the policy store reachable?"""
        return await self.store.ping()

    # ------------------------------------------------------------------ hooks

    async def check_action(self, ctx: RequestContext, action: Action) -> None:
        """May this caller perform `action` at all (before any study is known)?"""
        decision = decide(ctx.principal, action, None, self.policy, self.clock())
        self._enforce(ctx, decision)

    async def check_study(
        self, ctx: RequestContext, action: Action, study_instance_uid: str
    ) -> None:
        """May this caller perform `action` on this study? Raises when not."""
        self._enforce(ctx, await self.decide_study(ctx, action, study_instance_uid))

    async def decide_study(
        self, ctx: RequestContext, action: Action, study_instance_uid: str
    ) -> Decision:
        if ctx.principal is None:
            return Decision(False, ("unauthenticated",))
        study = await self.store.study(study_instance_uid)
        grants = await self._grants(ctx)
        return decide(ctx.principal, action, study, self.policy, self.clock(), grants)

    async def permitted_studies(
        self, ctx: RequestContext, action: Action, study_instance_uids: Iterable[str]
    ) -> set[str]:
        """The subset of studies this caller may see (QIDO filtering); never raises."""
        uids = set(study_instance_uids)
        principal = ctx.principal
        if principal is None or not uids:
            return set()
        now = self.clock()
        if not decide(principal, action, None, self.policy, now).allow:
            return set()
        studies: dict[str, StudyFacts] = await self.store.studies(uids)
        grants = await self._grants(ctx)
        return {
            uid
            for uid, facts in studies.items()
            if decide(principal, action, facts, self.policy, now, grants).allow
        }

    async def on_stored(self, ctx: RequestContext, study_instance_uids: Iterable[str]) -> None:
        """After a successful STOW: apply the ingest rules to the stored studies now, so the
        uploader's site can see them at once (the change feed would otherwise do it later)."""
        if self.source is None:
            return
        for uid in set(study_instance_uids):
            try:
                attributes = await self.source.study_attributes(uid)
                if attributes is not None:
                    await ingest(self.store, self.ingest_rules, attributes, "stow")
            except Exception as exc:  # the STOW succeeded; the change feed will retry
                log.warning("ingest of study %s after STOW failed: %r", uid, exc)

    async def _grants(self, ctx: RequestContext) -> frozenset[str]:
        principal = ctx.principal
        if principal is None:
            return frozenset()
        now = datetime.fromtimestamp(self.clock(), UTC)
        return await self.store.active_grants(principal.subject, principal.issuer, now)

    @staticmethod
    def _enforce(ctx: RequestContext, decision: Decision) -> None:
        """The one place a decision becomes an HTTP error."""
        ctx.decisions.append(decision)
        if decision.allow:
            return
        raise _error_for(decision)


def load_policy_files(
    policy_file: str | Path, ingest_rules_file: str | Path | None
) -> tuple[Policy, IngestRules]:
    """Both files, with the problems of both reported in one `PolicyError`."""
    problems: list[str] = []
    policy: Policy | None = None
    try:
        policy = load_policy(policy_file)
    except PolicyError as exc:
        problems += [f"{exc.source}: {p}" for p in exc.problems]
    rules = NO_INGEST_RULES
    if ingest_rules_file is not None:
        try:
            # Without a valid policy the labels cannot be cross-checked; the rest still is.
            rules = load_ingest_rules(ingest_rules_file, policy)
        except PolicyError as exc:
            problems += [f"{exc.source}: {p}" for p in exc.problems]
    if problems or policy is None:
        raise PolicyError("policy", problems)
    return policy, rules


def _error_for(decision: Decision) -> GatewayError:
    if decision.acr_values or decision.max_age is not None:
        return step_up(",".join(decision.reasons), decision.acr_values, decision.max_age)
    return insufficient_scope(",".join(decision.reasons))


__all__ = ["Authorizer", "PolicyError"]
