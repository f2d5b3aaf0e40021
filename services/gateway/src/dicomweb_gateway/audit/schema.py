"""Structural check of an audit message against the DICOM PS3.15 A.5.1 schema.

The schema (RELAX NG compact, A.5.1) is written out below as data: for each element, its
attributes (required or optional, with the enumerated values the standard lists) and its
children as an ordered sequence with cardinalities. `validate` walks a message element by
element and returns every problem; an empty list means the message has the A.5.1 structure.

One reading choice: A.5.1 lists `(ParticipantObjectName | ParticipantObjectQuery)` without an
occurrence marker, while the message tables of A.5.3 mark the name "U" (optional) for studies and
patients; we accept zero or one, as every audit repository does.
"""

from __future__ import annotations

import base64
import binascii
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

_DATETIME = re.compile(r"^-?\d{4,}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$")
_BOOLEAN = frozenset({"true", "false", "1", "0"})


@dataclass(frozen=True)
class Attr:
    required: bool = False
    values: frozenset[str] | None = None  # enumerated values, None: any token
    kind: str = "token"  # token | dateTime | boolean | base64 | integer


@dataclass(frozen=True)
class Child:
    tag: str | tuple[str, ...]  # a tuple is a choice between elements
    low: int = 0
    high: int | None = 1  # None: unbounded


@dataclass(frozen=True)
class Element:
    attrs: dict[str, Attr] = field(default_factory=dict)
    children: tuple[Child, ...] = ()
    text: str | None = None  # None: no text content; else "text" | "token" | "base64" | ...


def _enum(*values: str) -> frozenset[str]:
    return frozenset(values)


# CodedValueType: csd-code, codeSystemName, displayName?, originalText.
_CODED = Element(
    attrs={
        "csd-code": Attr(True),
        "codeSystemName": Attr(True),
        "displayName": Attr(),
        "originalText": Attr(True),
    }
)
# AuditSourceTypeCodeContent: a bare csd-code, or one with the other csd attributes.
_SOURCE_TYPE = Element(
    attrs={
        "csd-code": Attr(True),
        "codeSystemName": Attr(),
        "displayName": Attr(),
        "originalText": Attr(),
    }
)

SCHEMA: dict[str, Element] = {
    "AuditMessage": Element(
        children=(
            Child("EventIdentification", 1, 1),
            Child("ActiveParticipant", 1, None),
            Child("AuditSourceIdentification", 1, 1),
            Child("ParticipantObjectIdentification", 0, None),
        )
    ),
    "EventIdentification": Element(
        attrs={
            "EventActionCode": Attr(False, _enum("C", "R", "U", "D", "E")),
            "EventDateTime": Attr(True, kind="dateTime"),
            "EventOutcomeIndicator": Attr(True, _enum("0", "4", "8", "12")),
        },
        children=(
            Child("EventID", 1, 1),
            Child("EventTypeCode", 0, None),
            Child("EventOutcomeDescription", 0, 1),
            Child("PurposeOfUse", 0, None),  # added by IHE XUA++ in later editions
        ),
    ),
    "EventID": _CODED,
    "EventTypeCode": _CODED,
    "PurposeOfUse": _CODED,
    "EventOutcomeDescription": Element(text="text"),
    "ActiveParticipant": Element(
        attrs={
            "UserID": Attr(True),
            "AlternativeUserID": Attr(),
            "UserName": Attr(),
            "UserIsRequestor": Attr(True, kind="boolean"),
            "NetworkAccessPointID": Attr(),
            "NetworkAccessPointTypeCode": Attr(False, _enum("1", "2", "3", "4", "5")),
        },
        children=(Child("RoleIDCode", 0, None), Child("MediaIdentifier", 0, 1)),
    ),
    "RoleIDCode": _CODED,
    "MediaIdentifier": Element(children=(Child("MediaType", 1, 1),)),
    "MediaType": _CODED,
    "AuditSourceIdentification": Element(
        attrs={"AuditEnterpriseSiteID": Attr(), "AuditSourceID": Attr(True)},
        children=(Child("AuditSourceTypeCode", 0, None),),
    ),
    "AuditSourceTypeCode": _SOURCE_TYPE,
    "ParticipantObjectIdentification": Element(
        attrs={
            "ParticipantObjectID": Attr(True),
            "ParticipantObjectTypeCode": Attr(False, _enum("1", "2", "3", "4")),
            "ParticipantObjectTypeCodeRole": Attr(False, frozenset(str(n) for n in range(1, 27))),
            "ParticipantObjectDataLifeCycle": Attr(False, frozenset(str(n) for n in range(1, 16))),
            "ParticipantObjectSensitivity": Attr(),
        },
        children=(
            Child("ParticipantObjectIDTypeCode", 1, 1),
            Child(("ParticipantObjectName", "ParticipantObjectQuery"), 0, 1),
            Child("ParticipantObjectDetail", 0, None),
            Child("ParticipantObjectDescription", 0, None),
        ),
    ),
    "ParticipantObjectIDTypeCode": _CODED,
    "ParticipantObjectName": Element(text="token"),
    "ParticipantObjectQuery": Element(text="base64"),
    "ParticipantObjectDetail": Element(
        attrs={"type": Attr(True), "value": Attr(True, kind="base64")}
    ),
    # DICOMObjectDescriptionContents
    "ParticipantObjectDescription": Element(
        children=(
            Child("MPPS", 0, None),
            Child("Accession", 0, None),
            Child("SOPClass", 0, None),
            Child("ParticipantObjectContainsStudy", 0, 1),
            Child("Encrypted", 0, 1),
            Child("Anonymized", 0, 1),
        )
    ),
    "MPPS": Element(attrs={"UID": Attr(True)}),
    "Accession": Element(attrs={"Number": Attr(True)}),
    "SOPClass": Element(
        attrs={"UID": Attr(), "NumberOfInstances": Attr(True, kind="integer")},
        children=(Child("Instance", 0, None),),
    ),
    "Instance": Element(attrs={"UID": Attr(True)}),
    "ParticipantObjectContainsStudy": Element(children=(Child("StudyIDs", 0, None),)),
    "StudyIDs": Element(attrs={"UID": Attr(True)}),
    "Encrypted": Element(text="boolean"),
    "Anonymized": Element(text="boolean"),
}


def validate(xml: str) -> list[str]:
    """Every way `xml` departs from the A.5.1 structure (empty when it conforms)."""
    try:
        root = ET.fromstring(xml)  # noqa: S314 - only our own messages are checked
    except ET.ParseError as exc:
        return [f"not well-formed XML: {exc}"]
    if root.tag != "AuditMessage":
        return [f"root is <{root.tag}>, expected <AuditMessage>"]
    problems: list[str] = []
    _check(root, "AuditMessage", problems)
    return problems


def _check(node: ET.Element, where: str, problems: list[str]) -> None:
    spec = SCHEMA.get(node.tag)
    if spec is None:
        problems.append(f"{where}: element not in the schema")
        return
    for name, value in node.attrib.items():
        attr = spec.attrs.get(name)
        if attr is None:
            problems.append(f"{where}/@{name}: attribute not allowed")
        elif not _value_ok(value, attr):
            problems.append(f"{where}/@{name}: bad value {value!r}")
    for name, attr in spec.attrs.items():
        if attr.required and name not in node.attrib:
            problems.append(f"{where}/@{name}: required attribute missing")
    text = (node.text or "").strip()
    if spec.text is None and text:
        problems.append(f"{where}: text not allowed")
    elif spec.text is not None and not _value_ok(text, Attr(kind=spec.text)):
        problems.append(f"{where}: bad content {text[:40]!r}")
    _check_sequence(list(node), spec.children, where, problems)
    counts: dict[str, int] = {}
    for child in node:
        counts[child.tag] = counts.get(child.tag, 0) + 1
        _check(child, f"{where}/{child.tag}[{counts[child.tag]}]", problems)


def _check_sequence(
    children: list[ET.Element], sequence: tuple[Child, ...], where: str, problems: list[str]
) -> None:
    """Children must follow `sequence` in order, each within its cardinality."""
    i = 0
    for item in sequence:
        tags = (item.tag,) if isinstance(item.tag, str) else item.tag
        n = 0
        while i < len(children) and children[i].tag in tags:
            i += 1
            n += 1
        label = "|".join(tags)
        if n < item.low:
            problems.append(f"{where}: needs at least {item.low} <{label}>, found {n}")
        if item.high is not None and n > item.high:
            problems.append(f"{where}: allows at most {item.high} <{label}>, found {n}")
    if i < len(children):
        problems.append(f"{where}: unexpected <{children[i].tag}> at position {i + 1}")


def _value_ok(value: str, attr: Attr) -> bool:
    if attr.values is not None:
        return value in attr.values
    if attr.kind == "dateTime":
        return bool(_DATETIME.match(value))
    if attr.kind == "boolean":
        return value in _BOOLEAN
    if attr.kind == "integer":
        return value.lstrip("-").isdigit()
    if attr.kind == "base64":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        return True
    return True
