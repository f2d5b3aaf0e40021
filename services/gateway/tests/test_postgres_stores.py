"""Every store on a real PostgreSQL server (issue 15, AO-3): the throwaway cluster of
tests/plugins/postgres.py, a fresh database per test. No mock of the database anywhere."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dicomweb_gateway.audit import Auditor
from dicomweb_gateway.audit.store import AuditStore, drop_append_only_guard
from dicomweb_gateway.context import Action, RequestContext
from dicomweb_gateway.replay import SqlReplayCache, make_engine
from dicomweb_gateway.store.db import Claim, PolicyStore
from dicomweb_gateway.store.engines import unavailable
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from test_audit_store import message

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _psycopg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def sql(url: str, *statements: str) -> list[Any]:
    """Plain SQL as a database owner (what an attacker with database access can do)."""
    engine = create_engine(_psycopg(url))
    out: list[Any] = []
    try:
        with engine.begin() as conn:
            for statement in statements:
                result = conn.execute(text(statement))
                out.append(result.all() if result.returns_rows else None)
    finally:
        engine.dispose()
    return out


# --------------------------------------------------------------------- policy store


def test_migrations_run_unchanged_and_concurrently(pg_url: str) -> None:
    """Four processes' start-ups migrate one database at once: one migrates, none fails."""
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            PolicyStore(pg_url).migrate()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    [rows] = sql(pg_url, "SELECT version_num FROM policy_store_alembic_version")
    assert rows == [("0008_sqlite_store_version",)]
    [tables] = sql(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert {"study", "study_label", "uid_claim", "study_index", "device_inventory"} <= {
        t for (t,) in tables
    }


async def test_policy_store_round_trip_and_change_marker(pg_url: str) -> None:
    """A write through one replica changes the marker another replica reads (its caches)."""
    one, other = PolicyStore(pg_url), PolicyStore(pg_url)
    one.migrate()
    try:
        before = await other.change_marker()
        assert before is not None
        await one.record_ingest("1.2.3", "P1", {"research"}, "stow")
        after_ingest = await other.change_marker()
        assert after_ingest is not None and after_ingest > before
        facts = await other.study("1.2.3")
        assert facts.known and facts.labels == frozenset({"research"})
        await one.change_labels("1.2.3", {"vip"}, {"research"}, "admin", "test")
        after_labels = await other.change_marker()
        assert after_labels is not None and after_labels > after_ingest
        assert (await other.study("1.2.3")).labels == frozenset({"vip"})
        now = datetime.now(UTC)
        await one.grant_break_glass("alice", "iss", "1.2.3", "emergency", 60, now)
        assert (await other.change_marker() or 0) > after_labels
        assert await other.active_grants("alice", "iss", now) == frozenset({"1.2.3"})
        # Reads and writes that do not touch the facts leave the marker alone.
        marker = await other.change_marker()
        await one.put_cursor("x", 5)
        await other.studies(["1.2.3"])
        assert await other.change_marker() == marker
    finally:
        await one.close()
        await other.close()


async def test_uid_claims_are_atomic_across_replicas(pg_url: str) -> None:
    """Two replicas claim one instance UID under two studies at once: exactly one wins."""
    PolicyStore(pg_url).migrate()
    stores = [PolicyStore(pg_url) for _ in range(2)]
    try:
        for round_ in range(10):
            uid = f"9.9.{round_}"
            results = await asyncio.gather(
                *(
                    s.claim([Claim("instance", uid, f"1.{i}.{round_}", "2.1")])
                    for i, s in enumerate(stores)
                ),
                return_exceptions=True,
            )
            winners = [r for r in results if isinstance(r, tuple) and not r[0] and r[1]]
            assert len(winners) == 1, results
    finally:
        for s in stores:
            await s.close()


async def test_index_counts_add_up_across_replicas(pg_url: str) -> None:
    """Stores into one indexed study through several replicas at once: every store's new
    series and instances are added (no lost update), each modality is recorded once, and a
    study not indexed yet is handed back for indexing."""
    from dicomweb_gateway.store import IndexEntry, StudyIndex
    from dicomweb_gateway.store.models import StudyIndexEntry, StudyIndexModality
    from sqlalchemy import select

    PolicyStore(pg_url).migrate()
    stores = [PolicyStore(pg_url) for _ in range(3)]
    indexes = [StudyIndex(s) for s in stores]
    study = "1.2.826.0.1.3680043.10.88.1"
    try:
        await indexes[0].upsert([IndexEntry(study, {"PatientID": "P"}, frozenset({"CT"}), 1, 1)])
        results = await asyncio.gather(
            *(
                ix.add_stored({study: {"CT", "SR"}, "9.9.9": {"MR"}}, {study: (1, 2)})
                for ix in indexes
                for _ in range(4)
            )
        )
        assert all(r == {"9.9.9"} for r in results)
        async with stores[0]._session() as session:
            row = await session.get(StudyIndexEntry, study)
            assert row is not None and (row.num_series, row.num_instances) == (13, 25)
            modalities = list(
                await session.scalars(
                    select(StudyIndexModality.modality).where(
                        StudyIndexModality.study_instance_uid == study
                    )
                )
            )
            assert sorted(modalities) == ["CT", "SR"]
    finally:
        for s in stores:
            await s.close()


async def test_lease_has_one_holder_across_replicas(pg_url: str) -> None:
    PolicyStore(pg_url).migrate()
    stores = [PolicyStore(pg_url) for _ in range(4)]
    try:
        now = int(time.time())
        won = await asyncio.gather(*(s.lease("lease:index", None, now + 30, now) for s in stores))
        assert sum(won) == 1
        holder = won.index(True)
        # The holder renews; nobody else takes it before it expires; then anyone may.
        assert await stores[holder].lease("lease:index", now + 30, now + 60, now + 1)
        others = [s for i, s in enumerate(stores) if i != holder]
        assert not any([await s.lease("lease:index", None, now + 40, now + 2) for s in others])
        assert await others[0].lease("lease:index", None, now + 200, now + 61)
    finally:
        for s in stores:
            await s.close()


async def test_unreachable_database_is_unavailable_not_a_bug(pg_cluster: Any) -> None:
    from ztstack.ports import free_port

    store = PolicyStore(f"postgresql://zt@127.0.0.1:{free_port()}/nowhere")
    try:
        assert not await store.ping()
        with pytest.raises(SQLAlchemyError) as caught:
            await store.studies(["1.2.3"])
        assert unavailable(caught.value)
    finally:
        await store.close()


# --------------------------------------------------------------------- replay cache


async def test_replayed_jti_refused_on_another_replica(pg_url: str) -> None:
    caches = [SqlReplayCache(make_engine(pg_url)) for _ in range(3)]
    try:
        await asyncio.gather(*(c.setup() for c in caches))  # concurrent start-ups
        expires = time.time() + 60
        for n in range(20):
            firsts = await asyncio.gather(*(c.first_use(f"jti-{n}", expires) for c in caches))
            assert sorted(firsts) == [False, False, True]
        assert not await caches[0].first_use("jti-0", expires)
    finally:
        for c in caches:
            await c.close()


# --------------------------------------------------------------------- audit chain


def _writer(url: str, worker: int, count: int) -> None:
    store = AuditStore(url)
    for n in range(count):
        store.append([message(n, user=f"w{worker}")], f"{worker}-{n}")
    store.dispose()


@pytest.mark.control("AO-3")
@pytest.mark.control("VA-6")
def test_several_processes_keep_one_chain(pg_url: str) -> None:
    """Six writer processes (as six gateway replicas) append at once: one linear chain."""
    first = AuditStore(pg_url)
    first.ensure_schema()
    first.dispose()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(pg_url, w, 40)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    store = AuditStore(pg_url)
    try:
        assert store.verify() == []
        assert store.head()[0] == 240
        users = [r["user_id"] for r in store.iter_all()]
        assert {users.count(f"w{w}") for w in range(6)} == {40}
    finally:
        store.dispose()


@pytest.fixture
def chain(pg_url: str) -> Any:
    store = AuditStore(pg_url)
    for n in range(1, 7):
        store.append([message(n, patient=f"P{n % 3}")], f"req-{n}")
    yield store
    store.dispose()


def _tamper(url: str, *statements: str) -> None:
    engine = create_engine(_psycopg(url))
    with engine.begin() as conn:
        drop_append_only_guard(conn)
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


@pytest.mark.control("VA-6")
@pytest.mark.parametrize(
    ("statements", "expected"),
    [
        (
            ["UPDATE audit_record SET message = '<AuditMessage/>' WHERE seq = 3"],
            ["record 3 altered (its content does not match its hash)"],
        ),
        (["DELETE FROM audit_record WHERE seq = 4"], ["record 4 deleted (sequence jumps to 5)"]),
        (["DELETE FROM audit_record WHERE seq >= 5"], ["record 5-6 deleted (head at 6)"]),
        (
            [
                "UPDATE audit_record SET seq = -1 WHERE seq = 2",
                "UPDATE audit_record SET seq = 2 WHERE seq = 3",
                "UPDATE audit_record SET seq = 3 WHERE seq = -1",
            ],
            [
                "record 2 reordered (written after record 3)",
                "record 3 reordered (written after record 1)",
            ],
        ),
    ],
    ids=["altered", "deleted", "tail-deleted", "reordered"],
)
def test_verify_names_tampered_records(
    chain: AuditStore, pg_url: str, statements: list[str], expected: list[str]
) -> None:
    assert chain.verify() == []
    _tamper(pg_url, *statements)
    problems = chain.verify()
    assert all(e in problems for e in expected), problems


def test_append_only_on_postgres(chain: AuditStore, pg_url: str) -> None:
    for statement in (
        "UPDATE audit_record SET outcome = 0",
        "DELETE FROM audit_record",
        "TRUNCATE audit_record",
        "DELETE FROM audit_object",
    ):
        with pytest.raises(SQLAlchemyError, match="append-only"):
            sql(pg_url, statement)
    assert chain.verify() == []


def _ctx(n: int) -> RequestContext:
    return RequestContext(
        f"spill-{n}",
        "GET",
        "/dicom-web/studies",
        "127.0.0.1",
        query=f"n={n}",
        action=Action.SEARCH,
        status=200,
    )


@pytest.mark.control("AO-2")
async def test_records_that_fail_to_commit_are_spilled_then_chained(
    pg_cluster: Any, tmp_path: Path
) -> None:
    """The audit database is missing (as if down): requests get 503, their records wait in
    the spill (on disk) and every later request is refused until they are in the chain; the
    database appears and they are appended by themselves; a second gateway adopts the spill
    file of one that died."""
    from fastapi import HTTPException

    name = f"spill_{int(time.time() * 1000)}"
    url = pg_cluster.url(name)
    auditor = Auditor(AuditStore(url), spill_dir=tmp_path / "spill")
    await auditor.start()
    with pytest.raises(Exception) as refused:
        await auditor.record(_ctx(1))
    assert getattr(refused.value, "status", None) == 503 or isinstance(refused.value, HTTPException)
    assert auditor.spill.pending and list((tmp_path / "spill").glob("spill-*.jsonl"))
    with pytest.raises(Exception, match="recovering"):
        await auditor.preflight()
    pg_cluster.create_database(name)
    for _ in range(100):
        if not auditor.spill.pending:
            break
        await asyncio.sleep(0.1)
    assert not auditor.spill.pending
    await auditor.preflight()
    await auditor.record(_ctx(2))
    store = AuditStore(url)
    try:
        assert [r["request_id"] for r in store.iter_all()] == ["spill-1", "spill-2"]
        assert store.verify() == []
        # A gateway killed with records in its spill: the next one to start appends them.
        dead = tmp_path / "spill" / "spill-99999-deadbeef.jsonl"
        dead.write_text(
            '[{"recorded_at":"2026-01-05T10:00:00.000Z","event_id":"110112","event_action":"E",'
            '"event_types":"","outcome":0,"user_id":null,"patients":"","studies":"",'
            f'"request_id":"orphan","message":{_json(message(1).xml)}}}]\n',
            encoding="utf-8",
        )
        other = Auditor(AuditStore(url), spill_dir=tmp_path / "spill")
        await other.start()
        for _ in range(100):
            if not other.spill.pending and not dead.exists():
                break
            await asyncio.sleep(0.1)
        assert [r["request_id"] for r in store.iter_all()][-1] == "orphan"
        assert store.verify() == []
        await other.close()
    finally:
        store.dispose()
        await auditor.close()


def _json(value: str) -> str:
    import json

    return json.dumps(value)
