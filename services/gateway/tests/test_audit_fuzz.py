"""VA-6: no input can make an audit record malformed (hypothesis over every request field).

Every field of a request context that comes from a request (path, query, method, client
address, token claims, UIDs, PatientIDs, error codes and details, alert texts, admin event
reasons) is drawn from arbitrary text: any code point including controls, lone surrogates and
non-characters, and arbitrary bytes decoded the ways a server decodes them (UTF-8 with
surrogate escapes, Latin-1). Every message must parse with xml.etree and have the A.5.1
structure; all of them are then appended to a real SQLite store, and `verify` on that store
reports nothing, and exact searches by patient and study find exactly the records naming them.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dicomweb_gateway.audit.__main__ import main as cli
from dicomweb_gateway.audit.messages import Participants, messages_for
from dicomweb_gateway.audit.schema import validate
from dicomweb_gateway.audit.store import AuditStore, Filters
from dicomweb_gateway.context import Action, Decision, Principal, RequestContext, StudyRef
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NOW = datetime(2026, 1, 5, 10, 15, 0, 123000, tzinfo=UTC)
WHO = Participants("zt-gateway", "localhost", "https://localhost:8042", "localhost")
EXAMPLES = int(os.environ.get("ZT_FUZZ_EXAMPLES", "400"))

# Any code point: controls, lone surrogates (category Cs), U+FFFE/U+FFFF, astral planes.
any_char = st.characters(codec=None, exclude_categories=())
text = st.one_of(
    st.text(any_char, max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["", "\x00", "\x01\x1b", "]]>", "&amp;", '"><x/>', "\\x01", "a|b", "\ud800"]),
)


@st.composite
def principals(draw: Any) -> Principal | None:
    if draw(st.booleans()):
        return None
    return Principal(
        subject=draw(text),
        issuer=draw(text),
        client_id=draw(text),
        scopes=frozenset(draw(st.lists(text, max_size=2))),
        acr=draw(st.none() | text),
        jti=draw(text),
        audience=tuple(draw(st.lists(text, max_size=2))),
        dpop_jkt=draw(st.none() | text),
    )


@st.composite
def contexts(draw: Any) -> RequestContext:
    ctx = RequestContext(
        request_id=draw(st.uuids()).hex,
        method=draw(text),
        path=draw(text),
        client_ip=draw(text),
        query=draw(text),
        transaction=draw(st.none() | text),
        action=draw(st.none() | st.sampled_from(list(Action))),
        principal=draw(principals()),
        status=draw(st.sampled_from([200, 201, 204, 400, 401, 403, 404, 405, 409, 413, 429, 500])),
        error_code=draw(st.none() | text),
        error_detail=draw(st.none() | text),
        forwarded=draw(st.booleans()),
    )
    for _ in range(draw(st.integers(0, 2))):
        ctx.add_study(
            StudyRef(
                draw(text),
                draw(st.none() | text),
                tuple(draw(st.lists(text, max_size=2))),
                draw(st.none() | st.integers(0, 10**6)),
            )
        )
    ctx.decisions = [
        Decision(draw(st.booleans()), tuple(draw(st.lists(text, max_size=2))))
        for _ in range(draw(st.integers(0, 1)))
    ]
    ctx.alerts = draw(st.lists(st.tuples(text, text), max_size=2))
    if draw(st.booleans()):
        ctx.extra["security_event"] = {
            "event_type": draw(st.sampled_from(["110127", "110135", "x"])),
            "reason": draw(text),
        }
    return ctx


@pytest.mark.control("VA-6")
def test_no_request_field_can_make_a_record_malformed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/audit.db"
    store = AuditStore(url)
    seen = {"examples": 0, "messages": 0}
    by_patient: dict[str, set[str]] = defaultdict(set)
    by_study: dict[str, set[str]] = defaultdict(set)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(ctx=contexts())
    def one(ctx: RequestContext) -> None:
        messages = messages_for(ctx, WHO, NOW)
        if ctx.status is not None and ctx.status >= 400:
            assert messages, "every refused or failed request yields a record (VA-7)"
        for message in messages:
            ET.fromstring(message.xml)  # noqa: S314 - our own output; raises if not well-formed
            assert validate(message.xml) == [], message.xml
        store.append(messages, ctx.request_id)
        seen["examples"] += 1
        seen["messages"] += len(messages)
        # Every message of a request names all the studies and patients it touched.
        for ref in ctx.studies if messages else []:
            by_study[ref.study_instance_uid].add(ctx.request_id)
            if ref.patient_id:
                by_patient[ref.patient_id].add(ctx.request_id)

    one()
    assert seen["examples"] >= min(EXAMPLES, 100)
    assert store.verify() == []
    assert store.check_content() == []
    assert cli(["verify", "--database-url", url]) == 0
    assert capsys.readouterr().out.startswith(f"OK {seen['messages']} records")
    # Exact relations: a raw id finds exactly the requests whose context named it.
    for kind, index in (("patient", by_patient), ("study", by_study)):
        for raw, request_ids in list(index.items())[:40]:
            filters = Filters(limit=1000, **{kind: raw})  # type: ignore[arg-type]
            found = {r["request_id"] for r in store.search(filters)}
            assert found == request_ids, (kind, raw)
    store.dispose()
    print(f"hypothesis: {seen['examples']} examples, {seen['messages']} messages stored")
