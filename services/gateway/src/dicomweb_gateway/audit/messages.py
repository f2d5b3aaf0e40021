"""DICOM PS3.15 A.5 audit message builders: one request context in, audit messages out.

The XML is built with the standard library (`xml.etree.ElementTree`): the A.5.1 schema is small,
the gateway only writes messages (never parses untrusted ones), and ElementTree escapes every
attribute and text value, so a library would add a dependency without removing a risk.

Which messages a request yields (one place for the rule, see `messages_for`):
- a denial (401/403, a denied policy decision), a DPoP failure, a preamble rejection, a
  break-glass grant or an admin change: exactly one Security Alert (110113) whose EventTypeCodes
  (CID 403) say what happened;
- an allowed DICOMweb transaction: exactly one Query (110112), DICOM Instances Transferred
  (110104, action R for retrieval, C for store), DICOM Study Deleted (110105) or DICOM Instances
  Accessed (110103, action D, for a series deletion);
- reading the audit log: Audit Log Used (110101);
- reading a study's labels through the admin API: DICOM Instances Accessed (110103, action R);
- a request refused before its transaction was carried out (400, 404, 405, 406, 413, 415, 429
  and any other 4xx except 409, nothing forwarded), or an error of a request that has no
  transaction (unknown route, path guard, a 500 of the viewer): one Security Alert (110113),
  EventTypeCode 110132 Use of Restricted Function, whose description names the status and
  the error code (VA-7: every request leaves exactly one record, whatever its status).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from ..context import Action, Principal, RequestContext, SecurityEvent, StudyRef

# --- XML 1.0 safety (VA-6) --------------------------------------------------------------------
#
# XML 1.0 (section 2.2, production [2] Char) allows only #x9 | #xA | #xD | [#x20-#xD7FF] |
# [#xE000-#xFFFD] | [#x10000-#x10FFFF]; a character outside that set is an error even written as
# a character reference, and ElementTree writes it out raw. Every value that reaches a message
# (path, query, header-derived text, UIDs, names, token claims, error details) therefore passes
# `xml_safe`, which replaces, besides the backslash itself:
#   - every C0 control character (U+0000-U+001F, including TAB, LF and CR: a record stays one
#     readable line per value), DEL (U+007F) and every C1 control (U+0080-U+009F) by `\xNN`;
#   - lone surrogates (U+D800-U+DFFF, what undecodable bytes become) and the non-characters
#     U+FFFE and U+FFFF by `\uNNNN`;
#   - the backslash by `\\`, so the encoding is reversible and two different inputs never give
#     the same text (an exact search for a value finds exactly that value).
# Everything else is kept as it is; ElementTree then escapes & < > " as usual.
_XML_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    point = ord(char)
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


def xml_safe(text: str) -> str:
    """`text` with every character XML 1.0 forbids (and the backslash) visibly escaped."""
    return _XML_UNSAFE.sub(_escape_char, text)


def _make_safe(root: ET.Element) -> None:
    """Apply `xml_safe` to every attribute value and text of a message (the one place)."""
    for node in root.iter():
        if node.text:
            node.text = xml_safe(node.text)
        for name, value in list(node.attrib.items()):
            node.set(name, xml_safe(value))


@dataclass(frozen=True)
class Code:
    """A coded value (csd-code, codeSystemName, originalText), PS3.15 A.5.1 CodedValueType."""

    code: str
    scheme: str
    meaning: str


# EventID (PS3.15 A.5.3, CID 400 "Audit Event ID").
AUDIT_LOG_USED = Code("110101", "DCM", "Audit Log Used")
INSTANCES_ACCESSED = Code("110103", "DCM", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", "DCM", "DICOM Study Deleted")
QUERY = Code("110112", "DCM", "Query")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")

# Security Alert EventTypeCode (CID 403 "Security Alert Type Code").
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
EMERGENCY_OVERRIDE_STARTED = Code("110127", "DCM", "Emergency Override Started")
SECURITY_CONFIGURATION = Code("110129", "DCM", "Security Configuration")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of Restricted Function")
OBJECT_SECURITY_ATTRIBUTES_CHANGED = Code("110135", "DCM", "Object Security Attributes Changed")

# RoleIDCode (CID 402 "Audit Active Participant Role ID Code").
APPLICATION = Code("110150", "DCM", "Application")
DESTINATION = Code("110152", "DCM", "Destination Role ID")
SOURCE = Code("110153", "DCM", "Source Role ID")

# ParticipantObjectIDTypeCode (PS3.15 A.5.2.5 and RFC 3881).
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
URI = Code("12", "RFC-3881", "URI")
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID = Code("110181", "DCM", "SOP Class UID")
# RFC 7519 section 4.1.7: the access token's identifier (no DICOM code exists for it).
JWT_ID = Code("jti", "RFC-7519", "JWT ID")

# QIDO-RS searches the Study Root information model (PS3.18 10.6); the Query message names the
# SOP Class of the model searched (PS3.15 A.5.3.9).
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


class Outcome:
    """EventOutcomeIndicator (PS3.15 A.5.1)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


# Which CID 403 code each kind of security event gets: the one table for the rule.
ALERT_TYPES: dict[str, Code] = {
    # token or DPoP proof rejected: the calling application failed to authenticate
    "authentication": NODE_AUTHENTICATION,
    "dpop": NODE_AUTHENTICATION,
    # the caller is known but not allowed (policy deny, missing scope, too weak a login)
    "denied": USE_OF_RESTRICTED_FUNCTION,
    "step_up": USE_OF_RESTRICTED_FUNCTION,
    # a STOW part carried an executable preamble (CVE-2019-11687)
    "preamble": USE_OF_RESTRICTED_FUNCTION,
    # refused before any transaction ran (malformed, unknown route, method, size, rate limit)
    # or failed without one (VA-7)
    "refused": USE_OF_RESTRICTED_FUNCTION,
    "rate_limited": USE_OF_RESTRICTED_FUNCTION,
    "error": USE_OF_RESTRICTED_FUNCTION,
    # kinds the admin API puts in ctx.alerts
    "emergency-override": EMERGENCY_OVERRIDE_STARTED,
    "object-security-attributes-changed": OBJECT_SECURITY_ATTRIBUTES_CHANGED,
    "security-configuration": SECURITY_CONFIGURATION,
}
CID_403 = {
    code.code: code
    for code in (
        NODE_AUTHENTICATION,
        EMERGENCY_OVERRIDE_STARTED,
        SECURITY_CONFIGURATION,
        USE_OF_RESTRICTED_FUNCTION,
        OBJECT_SECURITY_ATTRIBUTES_CHANGED,
    )
}

# ctx.extra key the admin API sets: {"event_type": "110127" | "110135", "reason": ..., ...}
SECURITY_EVENT_KEY = "security_event"


@dataclass(frozen=True)
class Participants:
    """Who, besides the requesting user, takes part: names from the settings."""

    source_id: str  # AuditSourceID and the gateway's UserID
    gateway_host: str
    archive_id: str  # the archive's URL, as the gateway knows it
    archive_host: str


@dataclass
class AuditMessage:
    """One message and the fields the store indexes for filtering."""

    event_id: Code
    action: str
    outcome: int
    time: datetime
    xml: str
    user: str | None
    patients: tuple[str, ...] = ()
    studies: tuple[str, ...] = ()
    event_types: tuple[str, ...] = field(default_factory=tuple)


def utc_timestamp(moment: datetime) -> str:
    """xsd:dateTime in UTC with an explicit zone and milliseconds, e.g. 2026-01-05T10:15:00.123Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def user_name(principal: Principal) -> str:
    """IHE IUA: UserName = alias<user@issuer>, with the token audience as the alias."""
    alias = principal.audience[0] if principal.audience else ""
    return f"{alias}<{principal.subject}@{principal.issuer}>"


def outcome_for(status: int | None) -> int:
    if status is None or status < 400:
        return Outcome.SUCCESS
    if status < 500:
        return Outcome.MINOR_FAILURE
    return Outcome.SERIOUS_FAILURE


def alert_kinds(ctx: RequestContext) -> list[tuple[str, str]]:
    """The security events of a request as (kind, reason), in the order they happened."""
    kinds: list[tuple[str, str]] = []
    reason = ctx.error_detail or ctx.error_code or ""
    if ctx.security_event is not None:
        # The typed kind the refusing error carried (errors.py, context.SecurityEvent).
        kinds.append((ctx.security_event.value, reason))
    elif ctx.status == 401:
        kinds.append((SecurityEvent.AUTHENTICATION.value, reason))
    denied = [d for d in ctx.decisions if not d.allow]
    if ctx.status == 403 or (denied and not kinds):
        why = ",".join(r for d in denied for r in d.reasons) or reason
        kinds.append(("denied", why))
    kinds.extend((kind, text) for kind, text in ctx.alerts)
    event = ctx.extra.get(SECURITY_EVENT_KEY)
    if isinstance(event, dict) and not kinds:
        # An admin event without a matching alert: its CID 403 code names the kind.
        coded = CID_403.get(str(event.get("event_type")))
        kind = next((k for k, v in ALERT_TYPES.items() if v == coded), "security-configuration")
        kinds.append((kind, str(event.get("reason", ""))))
    return kinds


def refusal_kind(ctx: RequestContext) -> tuple[str, str] | None:
    """(kind, reason) when the request was refused before its transaction ran, or failed
    without one; None when a transaction message (or nothing, for a success) describes it."""
    status = ctx.status
    if status is None or status < 400:
        return None
    reason = f"HTTP {status} {ctx.error_code or 'error'}"
    if ctx.error_detail:
        reason += f": {ctx.error_detail}"
    if status == 429:
        return ("rate_limited", reason)
    if status < 500 and status != 409 and not ctx.forwarded:
        return ("refused", reason)
    if _transaction_event(ctx) is None:
        return ("refused" if status < 500 else "error", reason)
    return None


def messages_for(ctx: RequestContext, who: Participants, now: datetime) -> list[AuditMessage]:
    """Every audit message a finished request yields (see the module docstring).

    Any request with a status of 400 or more yields at least one message.
    """
    messages: list[AuditMessage] = []
    kinds = alert_kinds(ctx)
    if kinds:
        messages.append(security_alert(ctx, who, now, kinds))
    denied = ctx.status in (401, 403) or any(not d.allow for d in ctx.decisions)
    if denied:
        return messages
    refusal = refusal_kind(ctx)
    if refusal is not None:
        # Refused before the transaction ran: the transaction did not happen, so no
        # transaction message; one Security Alert unless a security event already gave one.
        if not messages:
            messages.append(security_alert(ctx, who, now, [refusal]))
        return messages
    transaction = _transaction_message(ctx, who, now)
    if transaction is not None:
        messages.append(transaction)
    return messages


def _transaction_event(ctx: RequestContext) -> Code | None:
    """The EventID of the transaction message a request's action yields (None: no such)."""
    events = {
        Action.SEARCH: QUERY,
        Action.READ: INSTANCES_TRANSFERRED,
        Action.STORE: INSTANCES_TRANSFERRED,
        Action.DELETE: STUDY_DELETED,
        Action.AUDIT_READ: AUDIT_LOG_USED,
        Action.ADMIN: INSTANCES_ACCESSED if ctx.method in ("GET", "HEAD") else None,
    }
    return events.get(ctx.action) if ctx.action is not None else None


def _transaction_message(
    ctx: RequestContext, who: Participants, now: datetime
) -> AuditMessage | None:
    if ctx.action is Action.SEARCH:
        return query(ctx, who, now)
    if ctx.action is Action.READ:
        return instances_transferred(ctx, who, now, "R")
    if ctx.action is Action.STORE:
        return instances_transferred(ctx, who, now, "C")
    if ctx.action is Action.DELETE:
        if ctx.transaction and "series" in ctx.transaction:
            return _message(ctx, who, now, INSTANCES_ACCESSED, "D", _study_objects(ctx))
        return _message(ctx, who, now, STUDY_DELETED, "D", _study_objects(ctx))
    if ctx.action is Action.AUDIT_READ:
        return audit_log_used(ctx, who, now)
    if _transaction_event(ctx) is INSTANCES_ACCESSED:
        # Reading a study's labels and their history (admin API): the study's security
        # attributes were accessed where they are kept. An admin read that names no study (the
        # device inventory) names the resource read, by URI, as a security resource (13).
        objects = _study_objects(ctx) or [_resource_object(ctx)]
        return _message(ctx, who, now, INSTANCES_ACCESSED, "R", objects)
    return None


# --- one builder per message type -------------------------------------------------------------


def query(ctx: RequestContext, who: Participants, now: datetime) -> AuditMessage:
    """PS3.15 A.5.3.9 Query: the query itself travels base64-encoded in ParticipantObjectQuery."""
    url = ctx.path + (f"?{ctx.query}" if ctx.query else "")
    obj = ET.Element(
        "ParticipantObjectIdentification",
        ParticipantObjectID=STUDY_ROOT_FIND,
        ParticipantObjectTypeCode="2",
        ParticipantObjectTypeCodeRole="3",
    )
    _code(obj, "ParticipantObjectIDTypeCode", SOP_CLASS_UID)
    ET.SubElement(obj, "ParticipantObjectQuery").text = _b64(url)
    _detail(obj, "QueryEncoding", "UTF-8")
    return _message(ctx, who, now, QUERY, "E", [obj, *_patient_objects(ctx)])


def instances_transferred(
    ctx: RequestContext, who: Participants, now: datetime, action: str
) -> AuditMessage:
    """PS3.15 A.5.3.7: R for WADO-RS/WADO-URI retrieval, C for STOW-RS."""
    return _message(ctx, who, now, INSTANCES_TRANSFERRED, action, _study_objects(ctx))


def audit_log_used(ctx: RequestContext, who: Participants, now: datetime) -> AuditMessage:
    """PS3.15 A.5.3.2: the audit log is the participant object, named by its URI."""
    url = ctx.path + (f"?{ctx.query}" if ctx.query else "")
    obj = ET.Element(
        "ParticipantObjectIdentification",
        ParticipantObjectID=url,
        ParticipantObjectTypeCode="2",
        ParticipantObjectTypeCodeRole="13",
    )
    _code(obj, "ParticipantObjectIDTypeCode", URI)
    ET.SubElement(obj, "ParticipantObjectName").text = "Security Audit Log"
    return _message(ctx, who, now, AUDIT_LOG_USED, "R", [obj])


def security_alert(
    ctx: RequestContext, who: Participants, now: datetime, kinds: list[tuple[str, str]]
) -> AuditMessage:
    """PS3.15 A.5.3.11: EventTypeCodes from CID 403; the alert subject is the request URI."""
    types: list[Code] = []
    for kind, _ in kinds:
        code = ALERT_TYPES.get(kind, USE_OF_RESTRICTED_FUNCTION)
        if code not in types:
            types.append(code)
    subject = ET.Element(
        "ParticipantObjectIdentification",
        ParticipantObjectID=ctx.path,
        ParticipantObjectTypeCode="2",
        ParticipantObjectTypeCodeRole="13",
    )
    _code(subject, "ParticipantObjectIDTypeCode", URI)
    ET.SubElement(subject, "ParticipantObjectName").text = f"{ctx.method} {ctx.path}"
    for kind, reason in kinds:
        _detail(subject, "Alert Description", f"{kind}: {reason}")
    description = "; ".join(f"{kind}: {reason}" for kind, reason in kinds)
    return _message(
        ctx,
        who,
        now,
        SECURITY_ALERT,
        "E",
        [subject, *_study_objects(ctx)],
        event_types=types,
        description=description,
    )


# --- building blocks --------------------------------------------------------------------------


def _message(
    ctx: RequestContext,
    who: Participants,
    now: datetime,
    event_id: Code,
    action: str,
    objects: list[ET.Element],
    *,
    event_types: list[Code] | None = None,
    description: str | None = None,
) -> AuditMessage:
    outcome = outcome_for(ctx.status)
    if description is None and outcome != Outcome.SUCCESS:
        description = ctx.error_code or f"HTTP {ctx.status}"
        if ctx.error_detail:
            description += f": {ctx.error_detail}"
    root = ET.Element("AuditMessage")
    event = ET.SubElement(
        root,
        "EventIdentification",
        EventActionCode=action,
        EventDateTime=utc_timestamp(now),
        EventOutcomeIndicator=str(outcome),
    )
    _code(event, "EventID", event_id)
    for code in event_types or ():
        _code(event, "EventTypeCode", code)
    if description:
        ET.SubElement(event, "EventOutcomeDescription").text = description
    _requestor(root, ctx, event_id, action)
    _gateway(root, who)
    # The archive took part only when something was forwarded to it.
    if ctx.forwarded:
        _archive(root, who, event_id, action)
    source = ET.SubElement(root, "AuditSourceIdentification", AuditSourceID=who.source_id)
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "3"})  # web server process
    objects = [*objects, *_token_objects(ctx)]
    root.extend(objects)
    _make_safe(root)
    ET.indent(root)
    return AuditMessage(
        event_id=event_id,
        action=action,
        outcome=outcome,
        time=now,
        xml=ET.tostring(root, encoding="unicode", xml_declaration=False),
        user=xml_safe(ctx.principal.subject) if ctx.principal else None,
        patients=tuple(xml_safe(p) for p in _patients(ctx)),
        studies=tuple(xml_safe(s.study_instance_uid) for s in ctx.studies),
        event_types=tuple(t.code for t in event_types or ()),
    )


def _requestor(root: ET.Element, ctx: RequestContext, event_id: Code, action: str) -> None:
    """The requesting user: UserID = sub, AlternativeUserID = client_id, UserName per IUA."""
    p = ctx.principal
    attrs = {"UserID": p.subject if p else ctx.client_ip or "unauthenticated"}
    if p is not None:
        attrs["AlternativeUserID"] = p.client_id
        attrs["UserName"] = user_name(p)
    attrs["UserIsRequestor"] = "true"
    if ctx.client_ip:
        attrs["NetworkAccessPointID"] = ctx.client_ip
        attrs["NetworkAccessPointTypeCode"] = "2" if _is_ip(ctx.client_ip) else "1"
    user = ET.SubElement(root, "ActiveParticipant", attrs)
    if event_id == INSTANCES_TRANSFERRED:
        _code(user, "RoleIDCode", SOURCE if action == "C" else DESTINATION)


def _gateway(root: ET.Element, who: Participants) -> None:
    gateway = ET.SubElement(
        root,
        "ActiveParticipant",
        UserID=who.source_id,
        AlternativeUserID=str(os.getpid()),  # IHE ATNA: the process id of the audited process
        UserIsRequestor="false",
        NetworkAccessPointID=who.gateway_host,
        NetworkAccessPointTypeCode="2" if _is_ip(who.gateway_host) else "1",
    )
    _code(gateway, "RoleIDCode", APPLICATION)


def _archive(root: ET.Element, who: Participants, event_id: Code, action: str) -> None:
    archive = ET.SubElement(
        root,
        "ActiveParticipant",
        UserID=who.archive_id,
        UserIsRequestor="false",
        NetworkAccessPointID=who.archive_host,
        NetworkAccessPointTypeCode="2" if _is_ip(who.archive_host) else "1",
    )
    if event_id == INSTANCES_TRANSFERRED:
        # Data flows archive -> user on retrieval and user -> archive on store.
        _code(archive, "RoleIDCode", DESTINATION if action == "C" else SOURCE)


def _study_objects(ctx: RequestContext) -> list[ET.Element]:
    """Study participant objects (type 2, role 3) then one per patient (type 1, role 1)."""
    objects = [_study(ref) for ref in ctx.studies]
    note = ctx.extra.get("deidentified")  # DA-1 (deid/views.py): served de-identified
    if isinstance(note, dict):
        for obj in objects:
            detail = ET.Element("ParticipantObjectDetail", type="Deidentified")
            detail.set("value", _b64(f"PS3.15 Annex E; project {note.get('project')}"))
            obj.insert(1, detail)  # A.5.1: after the ID type code, before the description
    return objects + _patient_objects(ctx)


def _resource_object(ctx: RequestContext) -> ET.Element:
    obj = ET.Element(
        "ParticipantObjectIdentification",
        ParticipantObjectID=ctx.path,
        ParticipantObjectTypeCode="2",
        ParticipantObjectTypeCodeRole="13",
    )
    _code(obj, "ParticipantObjectIDTypeCode", URI)
    ET.SubElement(obj, "ParticipantObjectName").text = f"{ctx.method} {ctx.path}"
    return obj


def _study(ref: StudyRef) -> ET.Element:
    obj = ET.Element(
        "ParticipantObjectIdentification",
        ParticipantObjectID=ref.study_instance_uid,
        ParticipantObjectTypeCode="2",
        ParticipantObjectTypeCodeRole="3",
    )
    _code(obj, "ParticipantObjectIDTypeCode", STUDY_INSTANCE_UID)
    if ref.number_of_instances is not None:
        desc = ET.SubElement(obj, "ParticipantObjectDescription")
        count = str(ref.number_of_instances)
        if len(ref.sop_class_uids) == 1:
            ET.SubElement(desc, "SOPClass", UID=ref.sop_class_uids[0], NumberOfInstances=count)
        else:
            # Counts per class are not known: one SOPClass element carries the total.
            ET.SubElement(desc, "SOPClass", NumberOfInstances=count)
    return obj


def _patients(ctx: RequestContext) -> tuple[str, ...]:
    seen: list[str] = []
    for ref in ctx.studies:
        if ref.patient_id and ref.patient_id not in seen:
            seen.append(ref.patient_id)
    return tuple(seen)


def _patient_objects(ctx: RequestContext) -> list[ET.Element]:
    objects = []
    for patient_id in _patients(ctx):
        obj = ET.Element(
            "ParticipantObjectIdentification",
            ParticipantObjectID=patient_id,
            ParticipantObjectTypeCode="1",
            ParticipantObjectTypeCodeRole="1",
        )
        _code(obj, "ParticipantObjectIDTypeCode", PATIENT_NUMBER)
        objects.append(obj)
    return objects


def _token_objects(ctx: RequestContext) -> list[ET.Element]:
    """The access token (by `jti`) that authorised the request: a security resource (13)."""
    p = ctx.principal
    if p is None or not p.jti:
        return []
    obj = ET.Element(
        "ParticipantObjectIdentification",
        ParticipantObjectID=p.jti,
        ParticipantObjectTypeCode="2",
        ParticipantObjectTypeCodeRole="13",
    )
    _code(obj, "ParticipantObjectIDTypeCode", JWT_ID)
    ET.SubElement(obj, "ParticipantObjectName").text = p.issuer
    _detail(obj, "client_id", p.client_id)
    if p.acr:
        _detail(obj, "acr", p.acr)
    if p.dpop_jkt:
        _detail(obj, "cnf.jkt", p.dpop_jkt)
    return [obj]


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent,
        tag,
        {"csd-code": code.code, "codeSystemName": code.scheme, "originalText": code.meaning},
    )


def _detail(parent: ET.Element, kind: str, value: str) -> None:
    """ParticipantObjectDetail: values are base64 so no text can break the XML (A.5.1)."""
    ET.SubElement(parent, "ParticipantObjectDetail", type=kind, value=_b64(value))


def _b64(text: str) -> str:
    """Base64 of the UTF-8 text; a lone surrogate (not encodable) becomes `\\udcxx` text."""
    return base64.b64encode(text.encode("utf-8", "backslashreplace")).decode("ascii")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def host_of(url: str) -> str:
    return urlsplit(url).hostname or url
