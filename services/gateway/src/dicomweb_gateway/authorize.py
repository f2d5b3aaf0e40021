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

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
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
    Claim,
    IngestRules,
    PolicyStore,
    ingest,
    load_ingest_rules,
)
from .store.engines import pool_of
from .store.index import IndexEntry, StudyIndex
from .store.matching import INDEXED_STUDY_KEYS
from .store.predicate import NotCompilable, Predicate, compile_policy

if TYPE_CHECKING:
    from .archive import Archive
    from .settings import Settings

log = logging.getLogger(__name__)

NO_INGEST_RULES = IngestRules(version=1, rules=())
COMPILED_MAX = 1024  # compiled search predicates kept per worker (Authorizer.compiled)


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
        reconcile_interval_seconds: float | None = 600.0,
    ) -> None:
        self.policy = policy
        self.store = store
        self.ingest_rules = ingest_rules
        self.source = source
        self.clock = clock
        self._interval = change_feed_interval_seconds
        self._poller: ChangeFeedPoller | None = None
        self._settings: Settings | None = None
        self._cache = _FactsCache()
        self._compiled: dict[tuple[object, ...], tuple[object, Predicate]] = {}
        self.index = StudyIndex(store)
        self._repairs: set[asyncio.Task[None]] = set()
        self._reconcile_interval: float | None = reconcile_interval_seconds

    @classmethod
    def from_settings(cls, settings: Settings, archive: Archive | None = None) -> Authorizer:
        """Load the policy and ingest rules (every problem in one `PolicyError`), migrate the
        policy store. `archive` is the process's one archive adapter (its index source feeds
        the study index); without one there is no index maintenance."""
        policy, rules = load_policy_files(settings.policy.file, settings.policy.ingest_rules_file)
        store = PolicyStore(settings.database_url, pool_of(settings))
        store.migrate()
        authorizer = cls(
            policy,
            store,
            rules,
            archive.index_source if archive is not None else None,
            settings.policy.change_feed_interval_seconds,
            reconcile_interval_seconds=getattr(
                settings.policy, "reconcile_interval_seconds", 600.0
            ),
        )
        authorizer._settings = settings
        return authorizer

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Start the index maintenance: the change feed (labels and indexes studies that reach
        the archive directly) and the reconciliation pass (store/indexer.py)."""
        if self.source is not None and self._poller is None:
            self._poller = ChangeFeedPoller(
                self.source,
                self.store,
                self.ingest_rules,
                self._interval,
                reconcile_interval=self._reconcile_interval,
                index=self.index,
            )
            self._poller.start()

    async def close(self) -> None:
        if self._poller is not None:
            await self._poller.stop()
            self._poller = None
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
        study = (await self._studies({study_instance_uid}))[study_instance_uid]
        grants = await self._grants(ctx)
        return decide(ctx.principal, action, study, self.policy, self.clock(), grants)

    async def permitted_studies(
        self, ctx: RequestContext, action: Action, study_instance_uids: Iterable[str]
    ) -> set[str]:
        """The subset of studies this caller may see (QIDO filtering); never raises."""
        decisions = await self.decide_studies(ctx, action, study_instance_uids)
        return {uid for uid, decision in decisions.items() if decision.allow}

    async def decide_studies(
        self, ctx: RequestContext, action: Action, study_instance_uids: Iterable[str]
    ) -> dict[str, Decision]:
        """`decide_study` for many studies at once: one read of their facts and of the
        caller's grants, and decide() once per distinct set of facts."""
        uids = set(study_instance_uids)
        principal = ctx.principal
        if principal is None or not uids:
            return dict.fromkeys(uids, Decision(False, ("unauthenticated",)))
        now = self.clock()
        gate = decide(principal, action, None, self.policy, now)
        if not gate.allow:
            return dict.fromkeys(uids, gate)
        studies = await self._studies(uids)
        grants = await self._grants(ctx)
        narrowed = principal.study_scopes
        # A search result lists many studies that share labels and patient: decide once per
        # distinct set of facts. A criterion reads the study UID only through break-glass
        # grants and `study:` scopes (policy/criteria/break_glass.py, study_scope.py), so both
        # are part of the key; everything else a criterion reads is in StudyFacts.
        memo: dict[tuple[object, ...], Decision] = {}
        out: dict[str, Decision] = {}
        for uid, facts in studies.items():
            key = (facts.labels, facts.patient_id, facts.known, uid in grants, uid in narrowed)
            decision = memo.get(key)
            if decision is None:
                decision = decide(principal, action, facts, self.policy, now, grants)
                memo[key] = decision
            out[uid] = decision
        return out

    # ------------------------------------------------------------------ the study index

    async def _rare(self) -> frozenset[str]:
        """The index's rare labels (the predicate's plan only: never what it selects)."""
        rare: frozenset[str] = await self.index.rare_labels()
        return rare

    def compiled(
        self,
        ctx: RequestContext,
        action: Action,
        grants: Iterable[str],
        rare_labels: frozenset[str] = frozenset(),
    ) -> Predicate:
        """The policy as a SQL predicate for this caller; raises `NotCompilable`.

        Memoized per (policy, principal, action, grants, rare labels, clock second): a search
        burst by one token compiles once a second, not per request. A predicate up to a second
        old is safe because it only ever picks candidates: every page is decided again with
        decide() at the current time before anyone sees it (study_page, scan_studies).
        """
        now = self.clock()
        policy = self.policy
        key = (id(policy), ctx.principal, action, frozenset(grants), rare_labels, int(now))
        kept = self._compiled.get(key)
        # The entry holds its policy: an id() reused by a newer policy object never matches.
        if kept is not None and kept[0] is policy:
            return kept[1]
        predicate = compile_policy(policy, ctx.principal, action, now, grants, rare_labels)
        if len(self._compiled) >= COMPILED_MAX:  # the bound (AP-8): start over
            self._compiled.clear()
        self._compiled[key] = (policy, predicate)
        return predicate

    @staticmethod
    def residual_keys(matches: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Matching keys the study index does not hold (the archive matches them)."""
        return [(k, v) for k, v in matches if k not in INDEXED_STUDY_KEYS]

    async def study_page(
        self,
        ctx: RequestContext,
        action: Action,
        matches: tuple[tuple[str, str], ...],
        fuzzy: bool,
        limit: int,
        offset: int,
    ) -> list[str]:
        """`study_page_versions` without the versions."""
        return [
            uid
            for uid, _ in await self.study_page_versions(ctx, action, matches, fuzzy, limit, offset)
        ]

    async def study_page_versions(
        self,
        ctx: RequestContext,
        action: Action,
        matches: tuple[tuple[str, str], ...],
        fuzzy: bool,
        limit: int,
        offset: int,
    ) -> list[tuple[str, str | None]]:
        """One page of the permitted studies matching indexed keys, in the index order.

        The policy is compiled to SQL and the page cut in SQL (one query); a policy that does
        not compile is evaluated with decide() over the index rows in bounded batches. Either
        way the page is checked with decide() once more before anyone sees it: the predicate
        can only ever hide a study, never show one decide() refuses. Each study comes with its
        index row's version (`StudyIndex.page`; None from the decide() walk), which keys the
        cache of the archive's answers (search.StudyAnswers).
        """
        principal = ctx.principal
        if principal is None or limit <= 0:
            return []
        if not decide(principal, action, None, self.policy, self.clock()).allow:
            return []
        grants = await self._grants(ctx)
        try:
            predicate = self.compiled(ctx, action, grants, await self._rare())
        except NotCompilable as exc:
            log.warning("policy does not compile to SQL (%s): decide() over the index", exc)
            page: list[tuple[str, str | None]] = []
            skip = offset
            async for batch in self.scan_studies(ctx, action, matches, fuzzy):
                for uid in batch:
                    if skip:
                        skip -= 1
                        continue
                    page.append((uid, None))
                    if len(page) >= limit:
                        return page
            return page
        rows = await self.index.page(predicate, matches, fuzzy, limit, offset)
        allowed = await self.permitted_studies(ctx, action, (uid for uid, _ in rows))
        if len(allowed) != len(rows):
            log.error(
                "study index predicate and decide() disagree on %s",
                {uid for uid, _ in rows} - allowed,
            )
        return [(uid, version) for uid, version in rows if uid in allowed]

    async def count_studies(
        self,
        ctx: RequestContext,
        action: Action,
        matches: tuple[tuple[str, str], ...],
        fuzzy: bool,
    ) -> int | None:
        """How many permitted studies match indexed keys (one SQL count), for the
        `Warning: 299` of a capped answer; None when the policy has no SQL form."""
        principal = ctx.principal
        if principal is None:
            return 0
        if not decide(principal, action, None, self.policy, self.clock()).allow:
            return 0
        grants = await self._grants(ctx)
        try:
            predicate = self.compiled(ctx, action, grants, await self._rare())
        except NotCompilable:
            return None
        return await self.index.count_matching(predicate, matches, fuzzy)

    async def scan_studies(
        self,
        ctx: RequestContext,
        action: Action,
        matches: tuple[tuple[str, str], ...],
        fuzzy: bool,
        batch: int = 500,
    ) -> AsyncIterator[list[str]]:
        """Every permitted study matching indexed keys, in the index order, in batches.

        Series/instance searches and keys the index does not hold walk this; decide() runs on
        every row (once per distinct set of facts), so it also serves a policy without a SQL
        form. Nothing here asks the archive.
        """
        principal = ctx.principal
        if principal is None:
            return
        now = self.clock()
        if not decide(principal, action, None, self.policy, now).allow:
            return
        grants = await self._grants(ctx)
        try:
            predicate: Predicate = self.compiled(
                ctx, action, grants, await self.index.rare_labels()
            )
        except NotCompilable:
            predicate = True
        narrowed = principal.study_scopes
        memo: dict[tuple[object, ...], bool] = {}
        async for rows in self.index.scan(predicate, matches, fuzzy, batch):
            kept: list[str] = []
            for row in rows:
                facts = row.facts
                uid = row.study_instance_uid
                key = (facts.labels, facts.patient_id, uid in grants, uid in narrowed)
                verdict = memo.get(key)
                if verdict is None:
                    verdict = decide(principal, action, facts, self.policy, now, grants).allow
                    memo[key] = verdict
                if verdict:
                    kept.append(uid)
            if kept:
                yield kept

    async def owner(self, level: str, uid: str) -> Claim | None:
        """Where a series/instance UID belongs, from the index (None: not indexed)."""
        return await self.index.owner(level, uid)

    async def record_locations(self, claims: Iterable[Claim]) -> None:
        """Repair the index after a miss the archive answered."""
        try:
            await self.index.record_locations(claims)
        except Exception as exc:  # a repair is an optimisation; the answer stands
            log.warning("study index repair failed: %r", exc)

    async def study_patients(self, uids: Iterable[str]) -> Mapping[str, str | None]:
        """PatientID of each known study (from the policy facts), for audit records."""
        facts = await self._studies(set(uids))
        return {uid: f.patient_id for uid, f in facts.items() if f.known}

    async def on_stored(
        self,
        ctx: RequestContext,
        study_instance_uids: Iterable[str],
        parts: Iterable[Any] = (),
        claims: Iterable[Claim] = (),
    ) -> None:
        """After a successful, verified store (STOW-RS or DIMSE): index the stored instances
        (from the instances themselves and the UID claims the store added: no archive read)
        and apply the ingest rules to new studies now, so the uploader's site can see them at
        once."""
        uids = set(study_instance_uids)
        try:
            await self._index_parts(list(parts), list(claims))
        except Exception as exc:  # the store succeeded; the change feed indexes it later
            log.warning("study index after store failed: %r", exc)
        if self.source is None:
            return
        # A study the store already knows was labelled from its first instance when it became
        # known, and ingest reads that same first instance again: nothing would change. Skipping
        # it saves reading the study's instance list from the archive, which grows with the
        # study (the change feed still re-checks every stable study).
        try:
            known = {uid for uid, facts in (await self._studies(uids)).items() if facts.known}
        except Exception as exc:  # the STOW succeeded; ingest all of them
            log.warning("policy store read after STOW failed: %r", exc)
            known = set()
        for uid in sorted(uids - known):
            try:
                attributes = await self.source.study_attributes(uid)
                if attributes is not None:
                    await ingest(self.store, self.ingest_rules, attributes, "stow")
            except Exception as exc:  # the STOW succeeded; the change feed will retry
                log.warning("ingest of study %s after STOW failed: %r", uid, exc)

    async def _index_parts(self, parts: list[Any], claims: list[Claim]) -> None:
        by_study: dict[str, list[Any]] = {}
        for part in parts:
            if part.study_instance_uid:
                by_study.setdefault(part.study_instance_uid, []).append(part)
        if not by_study:
            return
        modalities = {
            uid: {p.attributes.get("Modality", "") for p in stored} - {""}
            for uid, stored in by_study.items()
        }
        added: dict[str, tuple[int, int]] = {}
        for c in claims:
            series, instances = added.get(c.study_instance_uid, (0, 0))
            added[c.study_instance_uid] = (
                series + (c.level == "series"),
                instances + (c.level == "instance"),
            )
        entries: list[IndexEntry] = []
        for uid in sorted(await self.index.add_stored(modalities, added)):
            stored = by_study[uid]
            series, instances = await self.index.study_counts(uid)
            first = stored[0]
            patient = first.patient_id or ""
            entries.append(
                IndexEntry(
                    uid,
                    {**first.attributes, "PatientID": patient},
                    frozenset(modalities[uid]),
                    series,
                    instances,
                    self.source.study_id(patient, uid) if self.source is not None else uid,
                )
            )
        await self.index.upsert(entries)

    async def on_deleted(self, study_instance_uid: str, series_instance_uid: str | None) -> None:
        """After a DELETE: a deleted study leaves the index; a deleted series changes its
        study's modalities and counts (re-read from the archive). UID claims stay (AP-7)."""
        try:
            if series_instance_uid is None:
                await self.index.remove([study_instance_uid])
            elif self._poller is not None:
                await self._poller.indexer.refresh_uids([study_instance_uid])
        except Exception as exc:  # the delete succeeded; reconciliation repairs the index
            log.warning("study index after delete failed: %r", exc)

    def repair(self, study_instance_uids: Iterable[str]) -> None:
        """Studies the index lists but the archive did not answer for: re-read them in the
        background (indexed again if present, removed if gone)."""
        if self._poller is None:
            return
        task = asyncio.create_task(self._poller.indexer.refresh_uids(list(study_instance_uids)))
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def study_facts(self, uids: set[str]) -> dict[str, StudyFacts]:
        """Study facts for the store path (storage.store_parts), from the same cache."""
        return await self._studies(uids)

    async def _studies(self, uids: set[str]) -> dict[str, StudyFacts]:
        """Study facts, from this worker's cache while the store is unchanged."""
        cache = self._cache.current(await self.store.change_marker())
        if cache is None:
            return await self.store.studies(uids)
        # The answer is built from what was read before anything is remembered: remembering
        # may start the cache over (its bound), and must not take an answer with it (issue 14).
        hits = {uid: cache.facts[uid] for uid in uids if uid in cache.facts}
        missing = uids - hits.keys()
        if not missing:
            return hits
        found = await self.store.studies(missing)
        # Unknown studies are not cached: the change feed or a STOW may label them any moment,
        # and they are decided "deny" anyway.
        cache.remember_facts({u: f for u, f in found.items() if f.known})
        return hits | found

    async def _grants(self, ctx: RequestContext) -> frozenset[str]:
        principal = ctx.principal
        if principal is None:
            return frozenset()
        now = datetime.fromtimestamp(self.clock(), UTC)
        key = (principal.subject, principal.issuer)
        cache = self._cache.current(await self.store.change_marker())
        if cache is None:
            return await self.store.active_grants(principal.subject, principal.issuer, now)
        expiries = cache.grants.get(key)
        if expiries is None:
            expiries = await self.store.grant_expiries(principal.subject, principal.issuer, now)
            cache.remember_grants(key, expiries)
        # Expiry is checked on every request, so a cached grant never outlives itself.
        return frozenset(uid for uid, expires in expiries.items() if expires > now)

    @staticmethod
    def _enforce(ctx: RequestContext, decision: Decision) -> None:
        """The one place a decision becomes an HTTP error."""
        ctx.decisions.append(decision)
        if decision.allow:
            return
        raise _error_for(decision)


class _FactsCache:
    """Study facts and break-glass grants, valid while the store's change marker is unchanged.

    Every write to the tables the facts come from (studies, labels, break-glass grants: a
    label change, an ingest, a grant, in any worker or by plain SQL) changes the marker, and
    the marker is read on every request, so a revoked label or a new grant takes effect on the
    next request anywhere: the cache never answers from a store state older than the last
    committed change of those tables. Without a marker nothing is cached.
    """

    MAX_ENTRIES = 20_000  # the bound (AP-8): never more facts, nor more users' grants, than this

    def __init__(self) -> None:
        self.marker: int | None = None
        self.facts: dict[str, StudyFacts] = {}
        self.grants: dict[tuple[str, str], dict[str, datetime]] = {}

    def current(self, marker: int | None) -> _FactsCache | None:
        if marker is None:
            self.marker = None
            self.clear()
            return None
        if marker != self.marker:
            self.marker = marker
            self.clear()
        return self

    def clear(self) -> None:
        self.facts = {}
        self.grants = {}

    def remember_facts(self, facts: dict[str, StudyFacts]) -> None:
        """Remember up to the bound; when full, start over (cheap, and the store is the truth)."""
        if len(facts) > self.MAX_ENTRIES:
            facts = dict(list(facts.items())[: self.MAX_ENTRIES])
        if len(self.facts) + len(facts) > self.MAX_ENTRIES:
            self.facts = {}
        self.facts.update(facts)

    def remember_grants(self, key: tuple[str, str], expiries: dict[str, datetime]) -> None:
        if len(self.grants) >= self.MAX_ENTRIES:
            self.grants = {}
        self.grants[key] = expiries


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
