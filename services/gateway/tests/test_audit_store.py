"""Hash-chained audit store: append, filter, tamper detection, several writer processes."""

from __future__ import annotations

import itertools
import multiprocessing
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dicomweb_gateway.audit.__main__ import main as cli
from dicomweb_gateway.audit.messages import QUERY, AuditMessage, Participants, messages_for
from dicomweb_gateway.audit.store import AuditStore, AuditStoreError, Filters
from dicomweb_gateway.context import Action, RequestContext
from sqlalchemy.exc import SQLAlchemyError

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
WHO = Participants("zt-gateway", "localhost", "https://localhost:8042", "localhost")


def query_xml(n: int) -> str:
    """A real Query message (valid A.5.1) made distinct by its query string."""
    ctx = RequestContext(
        "r",
        "GET",
        "/dicom-web/studies",
        "127.0.0.1",
        query=f"n={n}",
        action=Action.SEARCH,
        status=200,
    )
    return messages_for(ctx, WHO, T0)[0].xml


def message(
    n: int, user: str = "alice", patient: str = "ZT-P001", outcome: int = 0
) -> AuditMessage:
    return AuditMessage(
        event_id=QUERY,
        action="E",
        outcome=outcome,
        time=T0 + timedelta(minutes=n),
        xml=query_xml(n),
        user=user,
        patients=(patient,),
        studies=(f"1.2.{n}",),
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def store(db: Path) -> AuditStore:
    s = AuditStore(f"sqlite:///{db}")
    for n in range(1, 7):
        s.append([message(n, user="bob" if n % 2 else "alice", patient=f"P{n % 3}")], f"req-{n}")
    yield s  # type: ignore[misc]
    s.dispose()


def tamper(db: Path, *statements: str) -> None:
    """What an attacker with write access to the file can do (the triggers go first)."""
    conn = sqlite3.connect(db)
    for table in ("audit_record", "audit_object"):
        conn.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
        conn.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_intact_chain_verifies(store: AuditStore) -> None:
    assert store.verify() == []
    assert store.head()[0] == 6
    rows = list(store.iter_all())
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["prev_hash"] == "0" * 64
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(rows))
    assert rows[0]["recorded_at"] == "2026-01-05T10:01:00.000Z"


@pytest.mark.control("VA-6")
def test_altered_record_is_named(store: AuditStore, db: Path) -> None:
    tamper(db, "UPDATE audit_record SET message = '<AuditMessage/>' WHERE seq = 3")
    assert store.verify() == ["record 3 altered (its content does not match its hash)"]


@pytest.mark.control("VA-6")
def test_altered_and_rehashed_record_is_named(store: AuditStore, db: Path) -> None:
    """Recomputing the hash of the altered record breaks the link from the next one."""
    from dicomweb_gateway.audit.store import record_hash

    row = next(r for r in store.iter_all() if r["seq"] == 3)
    row["user_id"] = "mallory"
    forged = record_hash(row["prev_hash"], row)
    tamper(db, f"UPDATE audit_record SET user_id = 'mallory', hash = '{forged}' WHERE seq = 3")  # noqa: S608
    assert store.verify() == ["record 3 altered or replaced (record 4 does not link to it)"]


@pytest.mark.control("VA-6")
def test_deleted_record_is_named(store: AuditStore, db: Path) -> None:
    tamper(db, "DELETE FROM audit_record WHERE seq = 4")
    assert store.verify() == ["record 4 deleted (sequence jumps to 5)"]


@pytest.mark.control("VA-6")
def test_deleted_and_renumbered_record_is_named(store: AuditStore, db: Path) -> None:
    tamper(
        db,
        "DELETE FROM audit_record WHERE seq = 4",
        "UPDATE audit_record SET seq = seq - 1 WHERE seq > 4",
        "UPDATE audit_head SET seq = 5",
    )
    problems = store.verify()
    assert problems == ["record 3 altered or replaced (record 4 does not link to it)"]


@pytest.mark.control("VA-6")
def test_deleted_tail_is_named(store: AuditStore, db: Path) -> None:
    tamper(db, "DELETE FROM audit_record WHERE seq >= 5")
    assert store.verify() == ["record 5-6 deleted (head at 6)"]


@pytest.mark.control("VA-6")
def test_reordered_records_are_named(store: AuditStore, db: Path) -> None:
    tamper(
        db,
        "UPDATE audit_record SET seq = -1 WHERE seq = 2",
        "UPDATE audit_record SET seq = 2 WHERE seq = 3",
        "UPDATE audit_record SET seq = 3 WHERE seq = -1",
    )
    problems = store.verify()
    assert "record 2 reordered (written after record 3)" in problems
    assert "record 3 reordered (written after record 1)" in problems


def test_append_only_triggers_refuse_update_and_delete(store: AuditStore, db: Path) -> None:
    conn = sqlite3.connect(db)
    for statement in ("UPDATE audit_record SET outcome = 0", "DELETE FROM audit_record"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(statement)
    conn.close()
    assert store.verify() == []


# (filters, expected seqs)
FILTERS = [
    (Filters(), [1, 2, 3, 4, 5, 6]),
    (Filters(user="alice"), [2, 4, 6]),
    (Filters(patient="P1"), [1, 4]),
    (Filters(study="1.2.5"), [5]),
    (Filters(study="1.2."), []),  # exact UIDs, never prefixes
    (Filters(since=T0 + timedelta(minutes=3), until=T0 + timedelta(minutes=4)), [3, 4]),
    (Filters(outcome=4), []),
    (Filters(event_id="110112", limit=2, offset=1), [2, 3]),
    (Filters(request_id="req-5"), [5]),
    (Filters(after_seq=4), [5, 6]),
]


@pytest.mark.parametrize(("filters", "expected"), FILTERS)
def test_filters(store: AuditStore, filters: Filters, expected: list[int]) -> None:
    assert [r["seq"] for r in store.search(filters)] == expected


def _writer(url: str, worker: int, count: int) -> None:
    store = AuditStore(url)
    for n in range(count):
        store.append([message(n, user=f"w{worker}")], f"{worker}-{n}")
    store.dispose()


def test_several_processes_keep_one_chain(db: Path) -> None:
    """Workers of one gateway write to one SQLite file: BEGIN IMMEDIATE serialises the chain."""
    url = f"sqlite:///{db}"
    AuditStore(url).ensure_schema()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = AuditStore(url)
    assert store.verify() == []
    assert store.head()[0] == 100
    assert len(list(store.iter_all())) == 100
    store.dispose()


def test_unwritable_store_raises(tmp_path: Path) -> None:
    store = AuditStore(f"sqlite:///{tmp_path}/missing-dir/audit.db")
    with pytest.raises(AuditStoreError):
        store.check_writable()
    with pytest.raises(AuditStoreError):
        store.append([message(1)])


@pytest.mark.control("VA-6")
def test_cli_verify_names_the_broken_record(
    store: AuditStore, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{db}"
    assert cli(["verify", "--database-url", url]) == 0
    assert "OK 6 records" in capsys.readouterr().out
    tamper(db, "DELETE FROM audit_record WHERE seq = 2")
    assert cli(["verify", "--database-url", url]) == 1
    out = capsys.readouterr().out
    assert "FAIL record 2 deleted" in out


def test_cli_export(store: AuditStore, db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.xml"
    assert (
        cli(
            ["export", "--database-url", f"sqlite:///{db}", "--format", "xml", "--output", str(out)]
        )
        == 0
    )
    text = out.read_text()
    assert text.count("<AuditMessage>") == 6 and text.endswith("</AuditMessages>\n")


def test_cli_unreadable_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["verify", "--database-url", f"sqlite:///{tmp_path}/nope/audit.db"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_sqlalchemy_error_is_wrapped(store: AuditStore, db: Path) -> None:
    tamper(db, "DROP TABLE audit_head")
    with pytest.raises(AuditStoreError):
        store.append([message(9)])
    assert not isinstance(AuditStoreError("x"), SQLAlchemyError)


# --- VA-7: searches by patient or study use an exact relation --------------------------------


@pytest.mark.control("VA-7")
def test_patient_and_study_search_is_exact(tmp_path: Path) -> None:
    """A PatientID holding the separator of the old index ("RT-X|ZT-P004") is not ZT-P004."""
    s = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    tricky = AuditMessage(QUERY, "E", 0, T0, query_xml(1), "mallory", ("RT-X|ZT-P004",), ("1.2|3",))
    vip = AuditMessage(QUERY, "E", 0, T0, query_xml(2), "er", ("ZT-P004",), ("3",))
    like = AuditMessage(QUERY, "E", 0, T0, query_xml(3), "x", ("ZT-P00%",), ("1.2_3",))
    s.append([tricky, vip, like])
    assert [r["seq"] for r in s.search(Filters(patient="ZT-P004"))] == [2]
    assert [r["seq"] for r in s.search(Filters(patient="RT-X|ZT-P004"))] == [1]
    assert [r["seq"] for r in s.search(Filters(patient="RT-X"))] == []
    assert [r["seq"] for r in s.search(Filters(patient="ZT-P00%"))] == [3]
    assert [r["seq"] for r in s.search(Filters(study="3"))] == [2]
    assert [r["seq"] for r in s.search(Filters(study="1.2|3"))] == [1]
    assert [r["seq"] for r in s.search(Filters(study="1.2.3"))] == []
    assert s.verify() == []
    s.dispose()


@pytest.mark.control("VA-7")
def test_a_version_1_store_gets_its_relation_filled(tmp_path: Path) -> None:
    """A store written before the relation existed ("|a|b|" columns) is searchable exactly."""
    db = tmp_path / "audit.db"
    s = AuditStore(f"sqlite:///{db}")
    s.append([message(1, patient="P1"), message(2, patient="P2")])
    s.dispose()
    tamper(
        db,
        "DROP TABLE audit_object",
        "DROP TABLE audit_schema",
        "UPDATE audit_record SET patients = '|P1|', studies = '|1.2.1|' WHERE seq = 1",
        "UPDATE audit_record SET patients = '|P2|', studies = '|1.2.2|' WHERE seq = 2",
    )
    from dicomweb_gateway.audit.store import record_hash

    # Re-chain as the old version would have written it (hashes over the old columns).
    conn = sqlite3.connect(db)
    prev = "0" * 64
    for seq in (1, 2):
        cur = conn.execute("SELECT * FROM audit_record WHERE seq = ?", (seq,))
        names = [d[0] for d in cur.description]
        row = dict(zip(names, cur.fetchone(), strict=True))
        digest = record_hash(prev, row)
        conn.execute(
            "UPDATE audit_record SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq)
        )
        prev = digest
    conn.execute("UPDATE audit_head SET hash = ?", (prev,))
    conn.commit()
    conn.close()
    s = AuditStore(f"sqlite:///{db}")
    assert [r["seq"] for r in s.search(Filters(patient="P2"))] == [2]
    assert [r["seq"] for r in s.search(Filters(study="1.2.1"))] == [1]
    s.append([message(3, patient="P2")])
    assert [r["seq"] for r in s.search(Filters(patient="P2"))] == [2, 3]
    assert s.verify() == []
    s.dispose()


@pytest.mark.control("VA-7")
def test_a_tampered_relation_is_named(store: AuditStore, db: Path) -> None:
    tamper(db, "UPDATE audit_object SET object_id = 'ZT-P004' WHERE seq = 2 AND kind = 'patient'")
    assert store.verify() == [
        "record 2 relation altered (its patient/study rows do not match the record)"
    ]


# --- VA-6: tamper evidence and content findings are separate ---------------------------------


def _chained_malformed(s: AuditStore) -> None:
    """A record whose message is not XML, written through the store (so its chain is intact)."""
    bad = AuditMessage(QUERY, "E", 0, T0, "<AuditMessage>\x01", "eve", ("P9",), ())
    s.append([bad], "req-bad")


@pytest.mark.control("VA-6")
def test_verify_separates_tampering_from_malformed_records(
    store: AuditStore, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{db}"
    _chained_malformed(store)  # record 7
    assert store.verify() == []  # the chain does not look at content
    assert [p.split(":")[0] for p in store.check_content()] == ["record 7 malformed"]
    assert cli(["verify", "--database-url", url]) == 3
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("OK 7 records, chain intact")
    assert out[1].startswith("CONTENT record 7 malformed: not well-formed XML")
    # Tampering with another record is still named, and changes the verdict.
    tamper(db, "UPDATE audit_record SET user_id = 'mallory' WHERE seq = 2")
    assert cli(["verify", "--database-url", url]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "FAIL record 2 altered (its content does not match its hash)"
    assert any(line.startswith("CONTENT record 7 malformed") for line in out)
    assert not any("record 2" in line for line in out if line.startswith("CONTENT"))


@pytest.mark.control("VA-6")
@pytest.mark.parametrize(
    ("statements", "named"),
    [
        (
            ["UPDATE audit_record SET message = CAST(x'3cff00' AS TEXT) WHERE seq = 3"],
            "record 3 altered",
        ),
        (["DELETE FROM audit_record WHERE seq = 3"], "record 3 deleted"),
        (
            [
                "UPDATE audit_record SET seq = -1 WHERE seq = 2",
                "UPDATE audit_record SET seq = 2 WHERE seq = 3",
                "UPDATE audit_record SET seq = 3 WHERE seq = -1",
            ],
            "record 2 reordered",
        ),
    ],
    ids=["altered-to-invalid-utf8", "deleted", "reordered"],
)
def test_tampering_is_named_next_to_a_malformed_record(
    store: AuditStore,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    statements: list[str],
    named: str,
) -> None:
    _chained_malformed(store)
    tamper(db, *statements)
    assert cli(["verify", "--database-url", f"sqlite:///{db}"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {named}" in out, out
