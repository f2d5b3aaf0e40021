"""Audit message builders: which messages a request yields, and their A.5.1 structure."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

import pytest
from dicomweb_gateway.audit.messages import Participants, messages_for, user_name
from dicomweb_gateway.audit.schema import validate
from dicomweb_gateway.context import (
    Action,
    Decision,
    Principal,
    RequestContext,
    SecurityEvent,
    StudyRef,
)

NOW = datetime(2026, 1, 5, 10, 15, 0, 123000, tzinfo=UTC)
WHO = Participants("zt-gateway", "localhost", "https://localhost:8042", "localhost")
ISS = "https://localhost:9443/realms/dicomweb"
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = StudyRef("1.2.826.0.1.1", "ZT-P001", (CT,), 3)


def principal(**overrides: Any) -> Principal:
    values: dict[str, Any] = {
        "subject": "north-clinician",
        "issuer": ISS,
        "client_id": "ohif-viewer",
        "scopes": frozenset({"user/ImagingStudy.rs"}),
        "roles": frozenset({"clinician"}),
        "acr": "urn:zt:acr:mfa",
        "jti": "jti-123",
        "audience": ("https://localhost:8443",),
    }
    values.update(overrides)
    return Principal(**values)


def ctx(**overrides: Any) -> RequestContext:
    values: dict[str, Any] = {
        "request_id": "req-1",
        "method": "GET",
        "path": "/dicom-web/studies",
        "client_ip": "127.0.0.1",
        "principal": principal(),
        "status": 200,
        "forwarded": True,
    }
    studies = overrides.pop("studies", [])
    values.update(overrides)
    context = RequestContext(**values)
    for ref in studies:
        context.add_study(ref)
    return context


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)  # noqa: S314 - our own output


def event_id(root: ET.Element) -> str:
    return root.find("EventIdentification/EventID").get("csd-code")  # type: ignore[union-attr]


def objects(root: ET.Element) -> list[tuple[str, str, str, str]]:
    """(ID type code, ParticipantObjectID, TypeCode, TypeCodeRole) of every participant object."""
    found = []
    for obj in root.findall("ParticipantObjectIdentification"):
        id_type = obj.find("ParticipantObjectIDTypeCode")
        assert id_type is not None
        found.append(
            (
                id_type.get("csd-code", ""),
                obj.get("ParticipantObjectID", ""),
                obj.get("ParticipantObjectTypeCode", ""),
                obj.get("ParticipantObjectTypeCodeRole", ""),
            )
        )
    return found


def participants(root: ET.Element) -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        (
            p.get("UserID", ""),
            p.get("UserIsRequestor", ""),
            tuple(r.get("csd-code", "") for r in p.findall("RoleIDCode")),
        )
        for p in root.findall("ActiveParticipant")
    ]


GW = ("zt-gateway", "false", ("110150",))
ARCHIVE_SOURCE = ("https://localhost:8042", "false", ("110153",))
ARCHIVE_DEST = ("https://localhost:8042", "false", ("110152",))
ARCHIVE = ("https://localhost:8042", "false", ())
USER = ("north-clinician", "true", ())
PATIENT = ("2", "ZT-P001", "1", "1")
STUDY_OBJ = ("110180", STUDY.study_instance_uid, "2", "3")
TOKEN = ("jti", "jti-123", "2", "13")

# (name, context, [(EventID, action, outcome, EventTypeCodes)], participants, objects)
CASES: list[tuple[str, RequestContext, list[tuple[str, str, str, tuple[str, ...]]], Any, Any]] = [
    (
        "qido",
        ctx(action=Action.SEARCH, transaction="search_for_studies", query="PatientID=ZT-P001"),
        [("110112", "E", "0", ())],
        [USER, GW, ARCHIVE],
        [("110181", "1.2.840.10008.5.1.4.1.2.2.1", "2", "3"), TOKEN],
    ),
    (
        "wado-rs",
        ctx(action=Action.READ, transaction="retrieve_study", studies=[STUDY]),
        [("110104", "R", "0", ())],
        [("north-clinician", "true", ("110152",)), GW, ARCHIVE_SOURCE],
        [STUDY_OBJ, PATIENT, TOKEN],
    ),
    (
        "stow-rs",
        ctx(method="POST", action=Action.STORE, transaction="store_instances", studies=[STUDY]),
        [("110104", "C", "0", ())],
        [("north-clinician", "true", ("110153",)), GW, ARCHIVE_DEST],
        [STUDY_OBJ, PATIENT, TOKEN],
    ),
    (
        "delete-study",
        ctx(method="DELETE", action=Action.DELETE, transaction="delete_study", studies=[STUDY]),
        [("110105", "D", "0", ())],
        [USER, GW, ARCHIVE],
        [STUDY_OBJ, PATIENT, TOKEN],
    ),
    (
        "delete-series",
        ctx(method="DELETE", action=Action.DELETE, transaction="delete_series", studies=[STUDY]),
        [("110103", "D", "0", ())],
        [USER, GW, ARCHIVE],
        [STUDY_OBJ, PATIENT, TOKEN],
    ),
    (
        "no-token",
        ctx(
            action=Action.SEARCH,
            principal=None,
            status=401,
            error_code="unauthorized",
            security_event=SecurityEvent.AUTHENTICATION,
            forwarded=False,
        ),
        [("110113", "E", "4", ("110126",))],
        [("127.0.0.1", "true", ()), GW],
        [("12", "/dicom-web/studies", "2", "13")],
    ),
    (
        "bad-token",
        ctx(
            action=Action.READ,
            principal=None,
            status=401,
            error_code="invalid_token",
            security_event=SecurityEvent.AUTHENTICATION,
            error_detail="bad signature",
            forwarded=False,
        ),
        [("110113", "E", "4", ("110126",))],
        [("127.0.0.1", "true", ()), GW],
        [("12", "/dicom-web/studies", "2", "13")],
    ),
    (
        "dpop-failure",
        ctx(
            action=Action.READ,
            principal=None,
            status=401,
            error_code="invalid_dpop_proof",
            security_event=SecurityEvent.DPOP,
            error_detail="replayed jti",
            forwarded=False,
        ),
        [("110113", "E", "4", ("110126",))],
        [("127.0.0.1", "true", ()), GW],
        [("12", "/dicom-web/studies", "2", "13")],
    ),
    (
        "policy-deny",
        ctx(
            action=Action.READ,
            status=403,
            error_code="insufficient_scope",
            forwarded=False,
            decisions=[Decision(False, ("site-unauthorized",))],
            studies=[STUDY],
        ),
        [("110113", "E", "4", ("110132",))],
        [USER, GW],
        [("12", "/dicom-web/studies", "2", "13"), STUDY_OBJ, PATIENT, TOKEN],
    ),
    (
        "hidden-as-404",
        ctx(
            action=Action.READ,
            status=404,
            error_code="not_found",
            forwarded=False,
            decisions=[Decision(False, ("study-scope-unauthorized",))],
        ),
        [("110113", "E", "4", ("110132",))],
        [USER, GW],
        [("12", "/dicom-web/studies", "2", "13"), TOKEN],
    ),
    (
        "step-up",
        ctx(
            method="DELETE",
            action=Action.DELETE,
            status=401,
            forwarded=False,
            error_code="insufficient_user_authentication",
            security_event=SecurityEvent.STEP_UP,
        ),
        [("110113", "E", "4", ("110132",))],
        [USER, GW],
        [("12", "/dicom-web/studies", "2", "13"), TOKEN],
    ),
    (
        "preamble-rejected",
        ctx(
            method="POST",
            action=Action.STORE,
            status=409,
            forwarded=False,
            alerts=[("preamble", "PE header in the preamble of part 1")],
        ),
        [("110113", "E", "4", ("110132",)), ("110104", "C", "4", ())],
        [USER, GW],
        [("12", "/dicom-web/studies", "2", "13"), TOKEN],
    ),
    (
        "break-glass",
        ctx(
            method="POST",
            path="/admin/break-glass",
            action=Action.BREAK_GLASS,
            status=201,
            forwarded=False,
            studies=[STUDY],
            alerts=[("emergency-override", "break-glass on study 1.2.826.0.1.1: trauma")],
            extra={"security_event": {"event_type": "110127", "reason": "trauma"}},
        ),
        [("110113", "E", "0", ("110127",))],
        [USER, GW],
        [("12", "/admin/break-glass", "2", "13"), STUDY_OBJ, PATIENT, TOKEN],
    ),
    (
        "labels-changed",
        ctx(
            method="PATCH",
            path="/admin/studies/1.2/labels",
            action=Action.ADMIN,
            status=200,
            forwarded=False,
            extra={"security_event": {"event_type": "110135", "reason": "x"}},
        ),
        [("110113", "E", "0", ("110135",))],
        [USER, GW],
        [("12", "/admin/studies/1.2/labels", "2", "13"), TOKEN],
    ),
    (
        "audit-read",
        ctx(path="/audit", query="user=x", action=Action.AUDIT_READ, forwarded=False),
        [("110101", "R", "0", ())],
        [USER, GW],
        [("12", "/audit?user=x", "2", "13"), TOKEN],
    ),
]


@pytest.mark.parametrize(
    ("name", "context", "expected", "who", "objs"), CASES, ids=[c[0] for c in CASES]
)
def test_messages_for_each_transaction_and_denial(
    name: str, context: RequestContext, expected: Any, who: Any, objs: Any
) -> None:
    messages = messages_for(context, WHO, NOW)
    got = []
    for m in messages:
        root = parse(m.xml)
        ev = root.find("EventIdentification")
        assert ev is not None
        types = tuple(t.get("csd-code", "") for t in ev.findall("EventTypeCode"))
        got.append(
            (event_id(root), ev.get("EventActionCode"), ev.get("EventOutcomeIndicator"), types)
        )
        assert validate(m.xml) == [], name
    assert got == expected
    first = parse(messages[0].xml)
    assert participants(first) == who
    assert objects(first) == objs


def test_no_message_for_unclassified_plumbing() -> None:
    """Health checks and static files carry no action and no security event."""
    assert messages_for(ctx(path="/healthz", principal=None, forwarded=False), WHO, NOW) == []


def test_requesting_user_carries_sub_issuer_client_ip_and_jti() -> None:
    [message] = messages_for(ctx(action=Action.SEARCH), WHO, NOW)
    root = parse(message.xml)
    user = root.find("ActiveParticipant")
    assert user is not None
    assert user.attrib == {
        "UserID": "north-clinician",
        "AlternativeUserID": "ohif-viewer",
        "UserName": f"https://localhost:8443<north-clinician@{ISS}>",
        "UserIsRequestor": "true",
        "NetworkAccessPointID": "127.0.0.1",
        "NetworkAccessPointTypeCode": "2",
    }
    assert user_name(principal()) == f"https://localhost:8443<north-clinician@{ISS}>"
    token = root.findall("ParticipantObjectIdentification")[-1]
    assert token.get("ParticipantObjectID") == "jti-123"
    assert token.findtext("ParticipantObjectName") == ISS
    details = {
        d.get("type"): base64.b64decode(d.get("value", "")).decode()
        for d in token.findall("ParticipantObjectDetail")
    }
    assert details == {"client_id": "ohif-viewer", "acr": "urn:zt:acr:mfa"}


def test_query_is_base64_in_participant_object_query() -> None:
    context = ctx(
        action=Action.SEARCH, path="/dicom-web/studies", query="PatientID=ZT-P001&limit=5"
    )
    [message] = messages_for(context, WHO, NOW)
    query = parse(message.xml).find("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert query is not None and query.text
    assert base64.b64decode(query.text).decode() == "/dicom-web/studies?PatientID=ZT-P001&limit=5"


def test_event_time_is_utc_with_zone_and_source_is_the_gateway() -> None:
    [message] = messages_for(ctx(action=Action.SEARCH), WHO, NOW)
    root = parse(message.xml)
    assert root.find("EventIdentification").get("EventDateTime") == "2026-01-05T10:15:00.123Z"  # type: ignore[union-attr]
    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "zt-gateway"
    assert source.find("AuditSourceTypeCode").get("csd-code") == "3"  # type: ignore[union-attr]


def test_study_description_names_sop_class_and_count() -> None:
    [message] = messages_for(ctx(action=Action.READ, studies=[STUDY]), WHO, NOW)
    sop = parse(message.xml).find(
        "ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass"
    )
    assert sop is not None and sop.attrib == {"UID": CT, "NumberOfInstances": "3"}


def test_hostile_text_is_escaped() -> None:
    context = ctx(
        action=Action.READ,
        status=403,
        error_code="insufficient_scope",
        forwarded=False,
        error_detail='"><evil/>',
        path='/dicom-web/studies/"><x/>',
    )
    [message] = messages_for(context, WHO, NOW)
    assert "<evil/>" not in message.xml and "<x/>" not in message.xml
    assert validate(message.xml) == []


def test_indexed_fields_match_the_message() -> None:
    [message] = messages_for(ctx(action=Action.READ, studies=[STUDY]), WHO, NOW)
    assert (message.event_id.code, message.action, message.outcome) == ("110104", "R", 0)
    assert message.user == "north-clinician"
    assert message.patients == ("ZT-P001",)
    assert message.studies == (STUDY.study_instance_uid,)


def test_server_error_is_a_serious_failure() -> None:
    [message] = messages_for(
        ctx(action=Action.READ, status=502, error_code="bad_gateway"), WHO, NOW
    )
    ev = parse(message.xml).find("EventIdentification")
    assert ev is not None and ev.get("EventOutcomeIndicator") == "8"
    assert ev.findtext("EventOutcomeDescription") == "bad_gateway"
