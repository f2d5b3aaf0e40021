"""Policy store: migrations, study facts, label history, break-glass grants, feed cursor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dicomweb_gateway.store import PolicyStore, UnknownStudy
from dicomweb_gateway.store.db import Claim
from sqlalchemy import create_engine, inspect

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    policy_store = PolicyStore(f"sqlite:///{tmp_path}/gateway.db")
    policy_store.migrate()
    yield policy_store
    await policy_store.close()


async def test_migrations_create_the_schema_and_are_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sub/dir/gateway.db"
    first = PolicyStore(url)
    first.migrate()
    first.migrate()  # a second worker starting: nothing to do, no error
    await first.close()
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {
        "study",
        "study_label",
        "label_change",
        "break_glass_grant",
        "feed_cursor",
        "policy_store_alembic_version",
    } <= tables
    assert "alembic_version" not in tables  # the shared database keeps other version tables free


def test_unsupported_database() -> None:
    with pytest.raises(ValueError, match="unsupported database"):
        PolicyStore("mysql://localhost/x")


async def test_unknown_study_has_no_facts(store: PolicyStore) -> None:
    facts = await store.study("1.2.3")
    assert (facts.known, facts.labels, facts.patient_id) == (False, frozenset(), None)


async def test_ingest_labels_a_study_once(store: PolicyStore) -> None:
    """AP-7: ingest labels a study when it first appears; later instances change nothing."""
    first = await store.record_ingest("1.2.3", "ZT-P001", {"site:north"}, "stow")
    assert first.added == {"site:north"}
    again = await store.record_ingest("1.2.3", "ZT-P001", {"site:north"}, "change-feed")
    assert again.added == frozenset()
    more = await store.record_ingest("1.2.3", "ZT-P009", {"vip", "research:trial-42"}, "stow")
    assert (more.added, more.after) == (frozenset(), {"site:north"})
    facts = await store.study("1.2.3")
    assert (facts.known, facts.labels, facts.patient_id) == (
        True,
        frozenset({"site:north"}),
        "ZT-P001",
    )
    history = await store.label_history("1.2.3")
    assert [(h.via, h.added, h.removed) for h in history] == [("stow", "site:north", "")]


async def test_uid_claims_refuse_another_study_or_patient(store: PolicyStore) -> None:
    """AP-7: a UID known under one study (or a study under one patient) is refused elsewhere."""
    first = [
        Claim("study", "1.2.3", "1.2.3", patient_id="P1"),
        Claim("series", "1.2.3.1", "1.2.3"),
        Claim("instance", "1.2.3.1.1", "1.2.3", "1.2.3.1"),
    ]
    conflicts, new = await store.claim(first)
    assert (conflicts, new) == ([], first)
    # The same claims again (a re-send) agree and add nothing.
    assert await store.claim(first) == ([], [])
    collisions = [
        [Claim("series", "1.2.3.1", "9.9.9")],
        [Claim("instance", "1.2.3.1.1", "9.9.9", "9.9.9.1")],
        [Claim("instance", "1.2.3.1.1", "1.2.3", "1.2.3.2")],
        [Claim("study", "1.2.3", "1.2.3", patient_id="P2")],
    ]
    for claims in collisions:
        conflicts, new = await store.claim([Claim("series", "7.7.7", "7.7"), *claims])
        assert conflicts == claims and new == []
    # Nothing of a refused call was recorded.
    assert await store.claims_of_study("7.7") == []
    await store.release(first[2:])
    assert {c.level for c in await store.claims_of_study("1.2.3")} == {"study", "series"}


async def test_unlabelled_study_is_known(store: PolicyStore) -> None:
    await store.record_ingest("1.2.4", None, set(), "change-feed")
    facts = await store.study("1.2.4")
    assert facts.known and facts.labels == frozenset()
    assert await store.label_history("1.2.4") == []


async def test_admin_label_change_is_recorded(store: PolicyStore) -> None:
    await store.record_ingest("1.2.3", "ZT-P002", {"site:south"}, "stow")
    update = await store.change_labels("1.2.3", ["legal-hold"], ["site:south"], "admin@idp", "case")
    assert (update.added, update.removed) == ({"legal-hold"}, {"site:south"})
    assert (await store.study("1.2.3")).labels == {"legal-hold"}
    last = (await store.label_history("1.2.3"))[-1]
    assert (last.changed_by, last.via, last.added, last.removed, last.reason) == (
        "admin@idp",
        "admin",
        "legal-hold",
        "site:south",
        "case",
    )


async def test_label_change_on_unknown_study_changes_nothing(store: PolicyStore) -> None:
    with pytest.raises(UnknownStudy):
        await store.change_labels("9.9", ["vip"], [], "admin", "x")
    assert not (await store.study("9.9")).known
    assert await store.label_history("9.9") == []


async def test_break_glass_grant_is_personal_and_expires(store: PolicyStore) -> None:
    await store.grant_break_glass("er", "iss", "1.2.5", "patient unconscious", 3600)
    now = datetime.now(UTC)
    assert await store.active_grants("er", "iss", now) == {"1.2.5"}
    assert await store.active_grants("er", "other-iss", now) == frozenset()
    assert await store.active_grants("someone", "iss", now) == frozenset()
    assert await store.active_grants("er", "iss", now + timedelta(seconds=3601)) == frozenset()


async def test_many_studies_at_once(store: PolicyStore) -> None:
    uids = [f"1.2.{i}" for i in range(1200)]
    for uid in uids[:3]:
        await store.record_ingest(uid, None, {"site:north"}, "stow")
    facts = await store.studies(uids)
    assert len(facts) == 1200
    assert sum(f.known for f in facts.values()) == 3


async def test_feed_cursor_only_moves_forward(store: PolicyStore) -> None:
    assert await store.cursor("archive") == 0
    await store.set_cursor("archive", 10)
    await store.set_cursor("archive", 4)
    assert await store.cursor("archive") == 10
    assert await store.ping()


@pytest.mark.control("AP-8")
async def test_change_marker_moves_with_the_facts_only(store: PolicyStore, tmp_path: Path) -> None:
    """The SQLite change marker (migration 0008) moves with every write to the facts and
    grants, from this store, another store on the file, or plain SQL; UID claims, the feed
    cursor and the study index leave it (and so the workers' caches) alone."""
    import sqlite3

    other = PolicyStore(f"sqlite:///{tmp_path}/gateway.db")
    try:
        before = await other.change_marker()
        assert before is not None
        await store.record_ingest("1.2.3", "P1", {"research"}, "stow")
        after_ingest = await other.change_marker()
        assert after_ingest is not None and after_ingest > before
        await store.change_labels("1.2.3", {"vip"}, {"research"}, "admin", "test")
        after_labels = await other.change_marker()
        assert after_labels is not None and after_labels > after_ingest
        now = datetime.now(UTC)
        await store.grant_break_glass("alice", "iss", "1.2.3", "emergency", 60, now)
        after_grant = await other.change_marker()
        assert after_grant is not None and after_grant > after_labels
        # Writes that do not touch the facts leave the marker alone.
        await store.put_cursor("x", 5)
        conflicts, new = await store.claim([Claim("instance", "1.2.3.4", "1.2.3", "1.2.3.5")])
        assert (conflicts, len(new)) == ([], 1)
        assert await other.change_marker() == after_grant
        # Plain SQL against the file (an operator's fix) moves it too, label by label.
        with sqlite3.connect(tmp_path / "gateway.db") as db:
            db.execute("DELETE FROM study_label WHERE study_instance_uid = '1.2.3'")
        after_sql = await other.change_marker()
        assert after_sql is not None and after_sql > after_grant
        assert (await other.study("1.2.3")).labels == frozenset()
    finally:
        await other.close()
