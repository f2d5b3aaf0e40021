"""QIDO-RS over the study index (issue 12; docs/policy.md, "Study index").

A search costs one page, whatever the archive holds:

- `/studies`: the permitted, matching studies are chosen and paged in SQL (the policy compiled
  to a predicate, the matching keys to conditions, `limit`/`offset` over permitted studies
  only, a stable order); then the archive is asked for exactly the page's studies by
  StudyInstanceUID list, for the attributes the client asked for (`includefield`). The
  archive's answer for each study is kept for a few seconds (`StudyAnswers`) while the study
  index reports the study unchanged, so a viewer's repeated study list does not ask again.
- `/series`, `/instances` across studies: the permitted studies matching the study-level keys
  are walked in the index order, a batch at a time; the archive matches the series/instance
  keys within each batch (a UID list); results are counted until `offset + limit` are found.
- Keys the index does not hold at study level are matched the same way: by the archive, on
  permitted candidates only.

The archive never hears of a study the caller may not see: every archive query names
permitted StudyInstanceUIDs only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import dicomjson
from .archive import Archive
from .context import Action, RequestContext
from .parse import QidoQuery, Transaction
from .rewrite import study_of

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
UIDS_PER_QUERY = 100  # StudyInstanceUIDs per archive query (about 6.5 kB of URL at most)
SCAN_BATCH = 100  # permitted studies per archive query when the archive matches keys
MIN_BATCH = 10  # the first such query's studies, at least
_LEVEL_PATH = {
    Transaction.SEARCH_FOR_STUDIES: "/studies",
    Transaction.SEARCH_FOR_SERIES: "/series",
    Transaction.SEARCH_FOR_INSTANCES: "/instances",
}
_SORT_TAGS = {
    Transaction.SEARCH_FOR_STUDIES: (),
    Transaction.SEARCH_FOR_SERIES: ("0020000E",),
    Transaction.SEARCH_FOR_INSTANCES: ("0020000E", "00080018"),
}
# The study attributes the archive returns by default in a series or instance search across
# studies (PS3.18 table 10.6.3-3), but leaves out once StudyInstanceUID is a matching key, as
# it is in every query the gateway sends: asked for explicitly, so the answer is the same.
STUDY_DEFAULTS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
)
# Series/instance UIDs: narrow the studies to walk to the ones that own them.
_OWNED_KEYS = {"SeriesInstanceUID": "series", "SOPInstanceUID": "instance"}
ANSWER_TTL_SECONDS = 10.0  # the bound on a kept study answer (the decision cache's, too)
ANSWERS_MAX = 5_000  # study answers kept per worker process (AP-8)


class StudyAnswers:
    """The archive's study-level answer for a study, kept per worker for at most
    ANSWER_TTL_SECONDS and only while the study index row's version is the one it was fetched
    under (`StudyIndex.page`).

    What this may serve is the archive's own attributes of a study, never a decision: which
    studies a caller sees is decided on every request (the compiled policy, then decide()
    again on the page), so a kept answer only saves asking the archive about a study this
    caller is already allowed to see. The version moves when the index learns of a change
    (a store through the gateway changes its counts; the change feed re-indexes a study the
    archive changed, which updates its last update and time indexed; a deleted study leaves
    the index), and the TTL bounds what the index cannot see. Answers are kept as bytes, so
    later steps (de-identification, URL rewriting) never change a kept copy.
    """

    def __init__(
        self,
        ttl_seconds: float = ANSWER_TTL_SECONDS,
        max_entries: int = ANSWERS_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._items: dict[tuple[str, tuple[str, ...]], tuple[str, float, bytes]] = {}

    def get(self, uid: str, fields: tuple[str, ...], version: str | None) -> dict[str, Any] | None:
        if version is None or self.ttl <= 0:
            return None
        kept = self._items.get((uid, fields))
        if kept is None or kept[0] != version or kept[1] <= self.clock():
            return None
        item: dict[str, Any] = json.loads(kept[2])
        return item

    def put(
        self, uid: str, fields: tuple[str, ...], version: str | None, item: dict[str, Any]
    ) -> None:
        if version is None or self.ttl <= 0:
            return
        if len(self._items) >= self.max_entries:  # the bound: start over
            self._items.clear()
        self._items[(uid, fields)] = (version, self.clock() + self.ttl, json.dumps(item).encode())


async def search_index(
    archive: Archive,
    authorizer: Any,
    ctx: RequestContext,
    transaction: Transaction,
    query: QidoQuery,
    resolve: Any,
    answers: StudyAnswers | None = None,
) -> list[dict[str, Any]]:
    """The answer to a QIDO search that names no study in its path."""
    residual = authorizer.residual_keys(query.matches)
    indexed = tuple(m for m in query.matches if m not in residual)
    limit = query.limit if query.limit is not None else 0
    if transaction is Transaction.SEARCH_FOR_STUDIES and not residual:
        rows = await authorizer.study_page_versions(
            ctx, Action.SEARCH, indexed, query.fuzzymatching, limit, query.offset
        )
        if not rows:
            return []
        page = [uid for uid, _ in rows]
        return await _fetch(
            archive, authorizer, ctx, transaction, query, page, (), answers, dict(rows)
        )
    archive_matches = [(k, v) for k, v in residual if k not in _OWNED_KEYS]
    # Series/instance UIDs named in the query: walk only the studies that own them.
    owned: set[str] | None = None
    for keyword, level in _OWNED_KEYS.items():
        uids = query.values(keyword)
        if uids:
            studies = {s for uid in uids for s in await resolve(level, uid)}
            owned = studies if owned is None else owned & studies
            archive_matches.append((keyword, ",".join(uids)))
    if owned is not None:
        if not owned:
            return []
        indexed = _narrow(indexed, owned)
    # A series' Modality is one of its study's ModalitiesInStudy: walk only those studies
    # (the archive still matches Modality itself).
    for keyword, value in archive_matches:
        if keyword == "Modality" and value not in ("", "*"):
            indexed = (*indexed, ("ModalitiesInStudy", value))
    found: list[dict[str, Any]] = []
    skip = query.offset
    # The archive is asked about as many studies as the page may need, then twice as many each
    # time, up to SCAN_BATCH: a page of 25 series asks about 25 studies, not 100, when most
    # candidates match (a Modality search over studies of that modality), and a sparse match
    # still reaches SCAN_BATCH studies per query quickly.
    size = min(SCAN_BATCH, max(MIN_BATCH, query.offset + limit)) if limit else SCAN_BATCH
    async for batch in authorizer.scan_studies(
        ctx, Action.SEARCH, indexed, query.fuzzymatching, batch=SCAN_BATCH
    ):
        while batch:
            chunk, batch = batch[:size], batch[size:]
            size = min(SCAN_BATCH, size * 2)
            items = await _fetch(
                archive, authorizer, ctx, transaction, query, chunk, archive_matches
            )
            for item in items:
                if skip:
                    skip -= 1
                    continue
                found.append(item)
                if len(found) >= limit:
                    return found
    return found


async def count_matches(
    authorizer: Any, ctx: RequestContext, transaction: Transaction, query: QidoQuery
) -> int | None:
    """How many permitted results match, where the index knows it (studies matched on indexed
    keys only: one SQL count); None otherwise (series and instances are counted by the
    archive, batch by batch, which the gateway does not do past the page)."""
    if transaction is not Transaction.SEARCH_FOR_STUDIES or authorizer.residual_keys(query.matches):
        return None
    count: int | None = await authorizer.count_studies(
        ctx, Action.SEARCH, query.matches, query.fuzzymatching
    )
    return count


def _narrow(matches: tuple[tuple[str, str], ...], studies: set[str]) -> tuple[tuple[str, str], ...]:
    """The matches with StudyInstanceUID limited to `studies` (intersected with any given)."""
    named = [v for k, v in matches if k == "StudyInstanceUID"]
    wanted = set(studies)
    for value in named:
        wanted &= {u for u in value.split(",") if u}
    rest = tuple(m for m in matches if m[0] != "StudyInstanceUID")
    # An empty list can only mean "nothing": a UID that cannot exist keeps it empty.
    return (*rest, ("StudyInstanceUID", ",".join(sorted(wanted)) or "0"))


async def _fetch(
    archive: Archive,
    authorizer: Any,
    ctx: RequestContext,
    transaction: Transaction,
    query: QidoQuery,
    studies: list[str],
    archive_matches: Iterable[tuple[str, str]],
    kept: StudyAnswers | None = None,
    versions: dict[str, str | None] | None = None,
) -> list[dict[str, Any]]:
    """The archive's answer for these (permitted) studies, in their order, then by UID.

    With `kept` and the studies' index `versions` (a study search on indexed keys only), a
    study whose answer is kept under its current version is not asked about again."""
    archive_matches = tuple(archive_matches)
    # Matching keys are returned (PS3.18 8.3.4.3) even when the index, not the archive,
    # matched them.
    sent = {k for k, _ in archive_matches} | {"StudyInstanceUID"}
    returned = tuple(k for k, _ in query.matches if k not in sent)
    versions = versions or {}
    fields = tuple(dict.fromkeys((*query.includefields, *returned)))
    items: list[dict[str, Any]] = []
    if kept is not None and transaction is Transaction.SEARCH_FOR_STUDIES and not archive_matches:
        ask = []
        for uid in studies:
            item = kept.get(uid, fields, versions.get(uid))
            if item is None:
                ask.append(uid)
            else:
                items.append(item)
    else:
        kept, ask = None, studies
    answers: list[list[dict[str, Any]]] = []
    if ask:
        count = -(-len(ask) // UIDS_PER_QUERY)  # balanced chunks of at most UIDS_PER_QUERY
        chunks = [ask[i::count] for i in range(count)]
        ctx.forwarded = True
        answers = await asyncio.gather(
            *(
                _query(archive, ctx, transaction, query, chunk, archive_matches, returned)
                for chunk in chunks
            )
        )
    position = {uid: n for n, uid in enumerate(studies)}
    sort_tags = _SORT_TAGS[transaction]
    for answer in answers:
        for item in answer:
            uid = study_of(item) or ""
            if position.get(uid) is None:
                continue
            items.append(item)
            if kept is not None:
                kept.put(uid, fields, versions.get(uid), item)
    items.sort(key=lambda i: (position[study_of(i) or ""], *(_text(i, t) for t in sort_tags)))
    if transaction is Transaction.SEARCH_FOR_STUDIES:
        seen: set[str] = set()
        unique = []
        for item in items:
            uid = study_of(item) or ""
            if uid not in seen:
                seen.add(uid)
                unique.append(item)
        items = unique
        if not archive_matches and len(items) < len(studies):
            missing = set(studies) - seen
            log.warning("study index lists %d studies the archive does not hold", len(missing))
            authorizer.repair(missing)
    return items


async def _query(
    archive: Archive,
    ctx: RequestContext,
    transaction: Transaction,
    query: QidoQuery,
    studies: list[str],
    archive_matches: tuple[tuple[str, str], ...],
    returned: tuple[str, ...],
) -> list[dict[str, Any]]:
    defaults = () if transaction is Transaction.SEARCH_FOR_STUDIES else STUDY_DEFAULTS
    sub = QidoQuery(
        matches=(("StudyInstanceUID", ",".join(studies)), *archive_matches),
        includefields=tuple(dict.fromkeys((*query.includefields, *returned, *defaults))),
        limit=None,
        offset=0,
        fuzzymatching=False,
    )
    return await archive.search(_LEVEL_PATH[transaction], sub, ("StudyInstanceUID", "PatientID"))


def _text(item: dict[str, Any], tag: str) -> str:
    values = dicomjson.texts(item, tag)
    return values[0] if values else ""
