"""The study index in process: matching keys, paging, fail closed, label changes, the Python
fallback, the change feed (new and deleted studies), reconciliation, and the bounded facts
cache (AP-8)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dicomweb_gateway import authorize
from dicomweb_gateway.archive.orthanc import OrthancSource
from dicomweb_gateway.authorize import Authorizer, _FactsCache
from dicomweb_gateway.context import Action, Principal, RequestContext
from dicomweb_gateway.parse import QidoQuery, Transaction
from dicomweb_gateway.policy import StudyFacts
from dicomweb_gateway.search import StudyAnswers, search_index
from dicomweb_gateway.store import ChangeFeedPoller, IndexEntry
from dicomweb_gateway.store.models import StudyIndexEntry, StudyIndexModality
from dicomweb_gateway.store.predicate import NotCompilable
from fake_orthanc import NORTH_CT, FakeOrthanc
from policy_helpers import DEMO_INGEST_RULES, DEMO_POLICY, NOW, principal
from sqlalchemy import select, update

pytestmark = pytest.mark.anyio
MFA = "urn:zt:acr:mfa"
RADIOLOGIST = principal("user/ImagingStudy.rs", "radiologist", "/site-north /site-south", acr=MFA)
NORTH_CLINICIAN = principal("user/ImagingStudy.rs", "clinician", "/site-north", acr=MFA)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.10.77.{n}"


def entry(n: int, **attributes: str) -> IndexEntry:
    base = {
        "StudyDate": f"2024{1 + n % 12:02d}{1 + n % 28:02d}",
        "StudyTime": f"{n % 24:02d}0000",
        "PatientID": f"PID-{n % 5}",
        "PatientName": f"Doe^Jane{n}",
        "AccessionNumber": f"acc{n:03d}",
        "StudyDescription": f"Chest CT {n}",
    }
    return IndexEntry(uid(n), base | attributes, frozenset({("CT", "MR")[n % 2]}), 1, 1)


@pytest.fixture
async def authorizer(tmp_path: Path) -> AsyncIterator[Authorizer]:
    settings = SimpleNamespace(
        database_url=f"sqlite:///{tmp_path}/gateway.db",
        policy=SimpleNamespace(
            file=DEMO_POLICY, ingest_rules_file=DEMO_INGEST_RULES, change_feed_interval_seconds=1
        ),
    )
    a = Authorizer.from_settings(settings)  # type: ignore[arg-type]
    a.clock = lambda: NOW
    # 60 studies: even ones north, odd ones south; study 0..59; 59 is indexed but unlabelled.
    await a.index.upsert(entry(n) for n in range(60))
    for n in range(59):
        site = "site:north" if n % 2 == 0 else "site:south"
        await a.store.record_ingest(uid(n), f"PID-{n % 5}", {site}, "test")
    yield a
    await a.close()


def ctx(who: Principal | None) -> RequestContext:
    return RequestContext("r", "GET", "/dicom-web/studies", "127.0.0.1", principal=who)


async def page(a: Authorizer, who: Principal, matches: Any = (), fuzzy: bool = False) -> list[str]:
    return await a.study_page(ctx(who), Action.SEARCH, tuple(matches), fuzzy, 1000, 0)


async def test_pages_are_stable_complete_and_permitted(authorizer: Authorizer) -> None:
    everything = await page(authorizer, RADIOLOGIST)
    assert set(everything) == {uid(n) for n in range(59)}  # 59 has no facts: invisible
    north = await page(authorizer, NORTH_CLINICIAN)
    assert set(north) == {uid(n) for n in range(0, 59, 2)}
    paged: list[str] = []
    for offset in range(0, 40, 7):
        paged += await authorizer.study_page(
            ctx(NORTH_CLINICIAN), Action.SEARCH, (), False, 7, offset
        )
    assert paged == north  # no duplicates, no gaps, same order
    assert await page(authorizer, principal("user/ImagingStudy.rs", "auditor")) == []


async def test_matching_keys(authorizer: Authorizer) -> None:
    a = authorizer

    async def find(*matches: tuple[str, str], fuzzy: bool = False) -> set[str]:
        return set(await page(a, RADIOLOGIST, matches, fuzzy))

    assert await find(("PatientID", "PID-1")) == {uid(n) for n in range(59) if n % 5 == 1}
    assert await find(("PatientID", "pid-1")) == set()  # identifiers are case-sensitive
    assert await find(("AccessionNumber", "acc00?")) == {uid(n) for n in range(10)}
    assert await find(("PatientName", "doe^jane1")) == {uid(1)}  # names ignore case
    assert await find(("PatientName", "jane1"), fuzzy=True) == {
        uid(n) for n in range(59) if str(n).startswith("1")
    }
    assert await find(("PatientName", "jane1")) == set()
    assert await find(("StudyDescription", "*ct 1*")) == {
        uid(n) for n in range(59) if str(n).startswith("1")
    }
    assert await find(("StudyDate", "20240301-20240331")) == {
        uid(n) for n in range(59) if n % 12 == 2
    }
    assert await find(("StudyDate", "-20240131")) == {uid(n) for n in range(59) if n % 12 == 0}
    assert await find(("StudyTime", "2000-")) == {uid(n) for n in range(59) if n % 24 >= 20}
    assert await find(("ModalitiesInStudy", "MR")) == {uid(n) for n in range(59) if n % 2}
    assert await find(("ModalitiesInStudy", "CT,MR")) == {uid(n) for n in range(59)}
    assert await find(("StudyInstanceUID", f"{uid(3)},{uid(59)},{uid(4)}")) == {uid(3), uid(4)}
    assert await find(("PatientID", ""), ("StudyDate", "*")) == {uid(n) for n in range(59)}


@pytest.mark.control("AP-1")
async def test_label_change_applies_to_the_next_search(authorizer: Authorizer) -> None:
    before = await page(authorizer, NORTH_CLINICIAN)
    assert uid(0) in before
    await authorizer.store.change_labels(uid(0), ["vip"], [], "admin", "test")
    assert uid(0) not in await page(authorizer, NORTH_CLINICIAN)
    await authorizer.store.change_labels(uid(1), ["site:north"], ["site:south"], "admin", "test")
    assert uid(1) in await page(authorizer, NORTH_CLINICIAN)


async def test_python_fallback_gives_the_same_pages(
    authorizer: Authorizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = {}
    for who in (RADIOLOGIST, NORTH_CLINICIAN):
        compiled[who] = [
            await authorizer.study_page(ctx(who), Action.SEARCH, (), False, 9, offset)
            for offset in (0, 9, 27)
        ]

    def refuse(*_: Any) -> Any:
        raise NotCompilable("test")

    monkeypatch.setattr(authorize, "compile_policy", refuse)
    for who, pages in compiled.items():
        assert [
            await authorizer.study_page(ctx(who), Action.SEARCH, (), False, 9, offset)
            for offset in (0, 9, 27)
        ] == pages


async def test_change_feed_and_reconciliation(tmp_path: Path) -> None:
    orthanc = FakeOrthanc()
    archive = orthanc.archive()
    settings = SimpleNamespace(
        database_url=f"sqlite:///{tmp_path}/gateway.db",
        policy=SimpleNamespace(
            file=DEMO_POLICY, ingest_rules_file=DEMO_INGEST_RULES, change_feed_interval_seconds=1
        ),
    )
    a = Authorizer.from_settings(settings, archive)  # type: ignore[arg-type]
    a.clock = lambda: NOW
    try:
        assert isinstance(a.source, OrthancSource)
        poller = ChangeFeedPoller(a.source, a.store, a.ingest_rules, 1.0, index=a.index)
        orthanc.add_study("n", NORTH_CT | {"StudyDate": "20240102", "Modality": "MR"})
        await poller.poll_once()
        north = NORTH_CT["StudyInstanceUID"]
        assert await page(a, NORTH_CLINICIAN) == [north]
        assert await page(a, NORTH_CLINICIAN, [("ModalitiesInStudy", "MR")]) == [north]
        owner = await a.owner("instance", north + ".1.1")
        assert owner is not None and owner.series_instance_uid == north + ".1"
        orthanc.remove_study("n")
        await poller.poll_once()
        assert await page(a, NORTH_CLINICIAN) == []
        assert (await a.owner("series", north + ".1")) is not None  # claims stay (AP-7)
        # Reconciliation: a study the feed never reported is indexed; an indexed study the
        # archive no longer holds is removed at the end of the pass.
        orthanc.studies["m"] = NORTH_CT | {"StudyInstanceUID": north + "9"}
        await a.index.upsert([entry(1)])
        async with a.store._session.begin() as session:  # indexed before the pass started
            await session.execute(
                update(StudyIndexEntry).values(indexed_at=datetime(2020, 1, 1, tzinfo=UTC))
            )
        await a.store.record_ingest(uid(1), "PID-1", {"site:north"}, "test")
        assert set(await page(a, NORTH_CLINICIAN)) == {uid(1)}
        seen = await poller.reconciler.run_pass()
        assert seen == 1
        assert await page(a, NORTH_CLINICIAN) == [north + "9"]
    finally:
        await a.close()
        await archive.close()


@pytest.mark.control("AP-8")
async def test_facts_cache_is_bounded_and_never_loses_an_answer(
    authorizer: Authorizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14 finding 1: the cache starting over while a lookup used it (KeyError)."""
    monkeypatch.setattr(_FactsCache, "MAX_ENTRIES", 10)
    cache = authorizer._cache
    first = {uid(n) for n in range(8)}
    assert len(await authorizer._studies(first)) == 8
    # Hits from the cache plus more misses than fit: the cache starts over mid-lookup.
    mixed = first | {uid(n) for n in range(8, 20)}
    facts = await authorizer._studies(mixed)
    assert set(facts) == mixed and all(f.known for f in facts.values())
    assert len(cache.facts) <= 10
    # More at once than the bound: answered, and the cache still within it.
    facts = await authorizer._studies({uid(n) for n in range(59)})
    assert len(facts) == 59 and len(cache.facts) <= 10
    # A label change takes effect at once (the store's change marker drops the cache).
    who = ctx(NORTH_CLINICIAN)
    assert await authorizer.permitted_studies(who, Action.SEARCH, {uid(0)}) == {uid(0)}
    await authorizer.store.change_labels(uid(0), [], ["site:north"], "admin", "test")
    assert await authorizer.permitted_studies(who, Action.SEARCH, {uid(0)}) == set()
    assert isinstance(cache.facts.get(uid(2)), StudyFacts | None)


class CountingArchive:
    """The archive's study search, answering any UID list and recording what it was asked."""

    def __init__(self) -> None:
        self.asked: list[set[str]] = []

    async def search(self, path: str, query: Any, keys: Any) -> list[dict[str, Any]]:
        assert path == "/studies"
        uids = set(dict(query.matches)["StudyInstanceUID"].split(","))
        self.asked.append(uids)
        return [
            {
                "0020000D": {"vr": "UI", "Value": [u]},
                "00081030": {"vr": "LO", "Value": [f"answer {len(self.asked)}"]},
            }
            for u in sorted(uids)
        ]


async def search(
    a: Authorizer, archive: CountingArchive, answers: StudyAnswers, who: Principal
) -> list[dict[str, Any]]:
    query = QidoQuery(limit=25)

    async def resolve(level: str, uid: str) -> set[str]:
        raise AssertionError("no series or instance key here")

    return await search_index(
        archive,  # type: ignore[arg-type]
        a,
        ctx(who),
        Transaction.SEARCH_FOR_STUDIES,
        query,
        resolve,
        answers,
    )


def studies_of(items: list[dict[str, Any]]) -> list[str]:
    return [item["0020000D"]["Value"][0] for item in items]


@pytest.mark.control("AP-1")
async def test_kept_study_answers_never_widen_a_search(authorizer: Authorizer) -> None:
    """The archive's answers are kept per study, but who sees which study is decided on
    every search: a south study another user's search fetched is never in a north
    clinician's answer, and a label change applies to the next search even for a kept one."""
    archive, answers = CountingArchive(), StudyAnswers(clock=lambda: 0.0)
    first = await search(authorizer, archive, answers, RADIOLOGIST)
    assert len(first) == 25 and len(archive.asked) == 1
    again = await search(authorizer, archive, answers, RADIOLOGIST)
    assert again == first and len(archive.asked) == 1  # nothing asked: all kept
    north = await search(authorizer, archive, answers, NORTH_CLINICIAN)
    north_uids = studies_of(north)
    assert north_uids and all(int(u.rsplit(".", 1)[1]) % 2 == 0 for u in north_uids)
    # Only the north studies the radiologist's page did not hold were asked for.
    assert archive.asked[-1] == set(north_uids) - set(studies_of(first))
    kept_north = next(u for u in north_uids if u in studies_of(first))
    await authorizer.store.change_labels(kept_north, ["site:south"], ["site:north"], "admin", "t")
    asked = len(archive.asked)
    after = await search(authorizer, archive, answers, NORTH_CLINICIAN)
    assert kept_north not in studies_of(after)
    assert len(archive.asked) == asked + 1  # the page moved up by one study, asked for alone


async def test_kept_study_answers_follow_the_index_and_the_ttl(authorizer: Authorizer) -> None:
    """A study the index re-indexed (its version moved) is asked for again, alone; past the
    TTL every study is asked for again."""
    now = [0.0]
    archive, answers = CountingArchive(), StudyAnswers(ttl_seconds=10, clock=lambda: now[0])
    first = await search(authorizer, archive, answers, RADIOLOGIST)
    changed = studies_of(first)[3]
    await authorizer.index.upsert([entry(int(changed.rsplit(".", 1)[1]))])  # re-indexed
    again = await search(authorizer, archive, answers, RADIOLOGIST)
    assert archive.asked[-1] == {changed}
    assert studies_of(again) == studies_of(first)
    assert again[3]["00081030"]["Value"] == ["answer 2"]  # the fresh answer, not the kept one
    now[0] = 10.0
    await search(authorizer, archive, answers, RADIOLOGIST)
    assert archive.asked[-1] == set(studies_of(first))
    assert len(archive.asked) == 3


async def test_kept_study_answers_are_bounded_and_copies() -> None:
    answers = StudyAnswers(max_entries=3, clock=lambda: 0.0)
    item = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}
    answers.put("1.2.3", (), "v1", item)
    got = answers.get("1.2.3", (), "v1")
    assert got == item
    assert got is not None
    got["0020000D"]["Value"] = ["changed"]  # a later step changing its copy
    assert answers.get("1.2.3", (), "v1") == item
    assert answers.get("1.2.3", (), "v2") is None  # another version
    assert answers.get("1.2.3", ("PatientAge",), "v1") is None  # other attributes asked for
    assert answers.get("1.2.3", (), None) is None  # no version: never served
    for n in range(4):
        answers.put(f"1.2.{n}", (), "v1", item)
    assert len(answers._items) <= 3


async def test_a_store_adds_its_new_claims_to_the_counts(authorizer: Authorizer) -> None:
    """After a store into an indexed study the index adds the series and instances the store
    claimed (new to the archive), and a modality it did not list; an instance stored again
    claims nothing and changes nothing, so a kept search answer stays valid."""
    from dicomweb_gateway.store import Claim

    study = uid(4)
    part = SimpleNamespace(
        study_instance_uid=study, patient_id="PID-4", attributes={"Modality": "SR"}
    )
    before = await authorizer.study_page_versions(
        ctx(RADIOLOGIST), Action.SEARCH, (("StudyInstanceUID", study),), False, 1, 0
    )
    new = [
        Claim("series", study + ".9", study),
        Claim("instance", study + ".9.1", study, study + ".9"),
    ]
    await authorizer.on_stored(ctx(RADIOLOGIST), [study], [part], new)
    async with authorizer.store._session() as session:
        row = await session.get(StudyIndexEntry, study)
        assert row is not None and (row.num_series, row.num_instances) == (2, 2)
        modalities = await session.scalars(
            select(StudyIndexModality.modality).where(
                StudyIndexModality.study_instance_uid == study
            )
        )
        assert set(modalities) == {"CT", "SR"}
    after = await authorizer.study_page_versions(
        ctx(RADIOLOGIST), Action.SEARCH, (("StudyInstanceUID", study),), False, 1, 0
    )
    assert after[0][1] != before[0][1]  # a new version: kept answers are asked for again
    await authorizer.on_stored(ctx(RADIOLOGIST), [study], [part], [])  # stored again
    again = await authorizer.study_page_versions(
        ctx(RADIOLOGIST), Action.SEARCH, (("StudyInstanceUID", study),), False, 1, 0
    )
    assert again == after


@pytest.mark.control("AP-8")
async def test_compiled_predicates_are_kept_a_second_per_policy_object(
    authorizer: Authorizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memo never answers for another policy object (even one reusing a freed id()) nor
    for another clock second; within one second one caller compiles once."""
    calls: list[object] = []
    real = authorize.compile_policy

    def counting(policy: Any, *args: Any) -> Any:
        calls.append(policy)
        return real(policy, *args)

    monkeypatch.setattr(authorize, "compile_policy", counting)
    who = ctx(RADIOLOGIST)
    first = authorizer.compiled(who, Action.SEARCH, ())
    assert authorizer.compiled(who, Action.SEARCH, ()) is first
    assert len(calls) == 1
    # A reloaded policy: the memo's key may carry the old id(), its entry holds the old object.
    old = authorizer.policy
    authorizer.policy = old.model_copy()
    monkeypatch.setattr(authorize, "id", lambda _o: id(old), raising=False)
    authorizer.compiled(who, Action.SEARCH, ())
    assert calls[-1] is authorizer.policy and len(calls) == 2
    monkeypatch.undo()
    monkeypatch.setattr(authorize, "compile_policy", counting)
    authorizer.clock = lambda: NOW + 1
    authorizer.compiled(who, Action.SEARCH, ())
    assert len(calls) == 3


@pytest.mark.control("AP-8")
async def test_a_label_change_ends_cached_access_while_stores_keep_the_cache_warm(
    authorizer: Authorizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The facts cache survives the writes every store makes (UID claims, index counts), so
    decisions under STOW load do not re-read the store; a label change by another worker
    still ends access at the next decision."""
    from dicomweb_gateway.errors import GatewayError
    from dicomweb_gateway.store import Claim, PolicyStore

    study, who = uid(0), ctx(NORTH_CLINICIAN)
    await authorizer.check_study(who, Action.READ, study)  # north study: allowed, now cached
    reads: list[object] = []
    real = authorizer.store.studies

    async def counting(uids: Any) -> Any:
        reads.append(uids)
        return await real(uids)

    monkeypatch.setattr(authorizer.store, "studies", counting)
    for n in range(3):  # what a store writes
        claims = [Claim("instance", f"{study}.1.{n}", study, f"{study}.1")]
        assert (await authorizer.store.claim(claims))[0] == []
        await authorizer.index.add_stored({study: {"CT"}}, {study: (0, 1)})
        await authorizer.check_study(who, Action.READ, study)
    assert reads == []  # every decision came from the cache
    other = PolicyStore(f"sqlite:///{tmp_path}/gateway.db")  # another worker
    try:
        await other.change_labels(study, ["site:south"], ["site:north"], "admin", "test")
    finally:
        await other.close()
    with pytest.raises(GatewayError):
        await authorizer.check_study(who, Action.READ, study)
    assert reads  # the store was read again
