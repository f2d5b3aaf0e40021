"""The A.5.1 structure check: the standard's example shape passes, each departure is named."""

from __future__ import annotations

import pytest
from dicomweb_gateway.audit.schema import SCHEMA, validate

# The retrieval message of FORMATS.md / PS3.15 A.5.3.7, written out by hand.
GOOD = """<AuditMessage>
  <EventIdentification EventActionCode="R" EventDateTime="2026-01-05T10:15:00.123Z"
                       EventOutcomeIndicator="0">
    <EventID csd-code="110104" codeSystemName="DCM" originalText="DICOM Instances Transferred"/>
  </EventIdentification>
  <ActiveParticipant UserID="alice" UserName="gw&lt;alice@iss&gt;" UserIsRequestor="true"
                     NetworkAccessPointID="127.0.0.1" NetworkAccessPointTypeCode="2">
    <RoleIDCode csd-code="110152" codeSystemName="DCM" originalText="Destination Role ID"/>
  </ActiveParticipant>
  <ActiveParticipant UserID="gw" UserIsRequestor="false">
    <RoleIDCode csd-code="110153" codeSystemName="DCM" originalText="Source Role ID"/>
  </ActiveParticipant>
  <AuditSourceIdentification AuditSourceID="gw">
    <AuditSourceTypeCode csd-code="3"/>
  </AuditSourceIdentification>
  <ParticipantObjectIdentification ParticipantObjectID="1.2.3" ParticipantObjectTypeCode="2"
                                   ParticipantObjectTypeCodeRole="3">
    <ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM"
                                 originalText="Study Instance UID"/>
    <ParticipantObjectDescription>
      <SOPClass UID="1.2" NumberOfInstances="2"/>
    </ParticipantObjectDescription>
  </ParticipantObjectIdentification>
  <ParticipantObjectIdentification ParticipantObjectID="P1" ParticipantObjectTypeCode="1"
                                   ParticipantObjectTypeCodeRole="1">
    <ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881"
                                 originalText="Patient Number"/>
  </ParticipantObjectIdentification>
</AuditMessage>"""


def test_the_standard_shape_is_valid() -> None:
    assert validate(GOOD) == []


# (what is broken, replace this, with this, the problem reported)
BROKEN = [
    ("root", "AuditMessage>", "Audit>", "root is <Audit>"),
    ("unknown element", '<AuditSourceTypeCode csd-code="3"/>', "<Extra/>", "unexpected <Extra>"),
    (
        "bad outcome",
        'EventOutcomeIndicator="0"',
        'EventOutcomeIndicator="3"',
        "@EventOutcomeIndicator: bad value",
    ),
    ("bad action", 'EventActionCode="R"', 'EventActionCode="X"', "@EventActionCode: bad value"),
    ("bad time", "2026-01-05T10:15:00.123Z", "yesterday", "@EventDateTime: bad value"),
    ("no UserID", 'UserID="alice" ', "", "@UserID: required attribute missing"),
    (
        "bad boolean",
        'UserIsRequestor="true"',
        'UserIsRequestor="yes"',
        "@UserIsRequestor: bad value",
    ),
    (
        "unknown attribute",
        'AuditSourceID="gw"',
        'AuditSourceID="gw" Colour="red"',
        "@Colour: attribute not allowed",
    ),
    (
        "code without meaning",
        ' originalText="Patient Number"',
        "",
        "@originalText: required attribute missing",
    ),
    (
        "bad type code",
        'ParticipantObjectTypeCode="1"',
        'ParticipantObjectTypeCode="9"',
        "@ParticipantObjectTypeCode: bad value",
    ),
    (
        "count not integer",
        'NumberOfInstances="2"',
        'NumberOfInstances="two"',
        "@NumberOfInstances: bad value",
    ),
    (
        "order",
        '<AuditSourceIdentification AuditSourceID="gw">\n'
        '    <AuditSourceTypeCode csd-code="3"/>\n'
        "  </AuditSourceIdentification>\n",
        "",
        "needs at least 1 <AuditSourceIdentification>",
    ),
    (
        "no EventID",
        '<EventID csd-code="110104" codeSystemName="DCM" '
        'originalText="DICOM Instances Transferred"/>',
        "",
        "needs at least 1 <EventID>",
    ),
]


@pytest.mark.parametrize(("name", "old", "new", "problem"), BROKEN, ids=[b[0] for b in BROKEN])
def test_each_departure_is_named(name: str, old: str, new: str, problem: str) -> None:
    assert old in GOOD
    problems = validate(GOOD.replace(old, new))
    assert any(problem in p for p in problems), problems


def test_query_must_be_base64_and_not_beside_a_name() -> None:
    broken = GOOD.replace(
        "<ParticipantObjectDescription>",
        "<ParticipantObjectName>x</ParticipantObjectName>"
        "<ParticipantObjectQuery>not base64!</ParticipantObjectQuery>"
        "<ParticipantObjectDescription>",
        1,
    )
    problems = validate(broken)
    assert any("ParticipantObjectQuery" in p and "bad content" in p for p in problems)
    assert any("at most 1 <ParticipantObjectName|ParticipantObjectQuery>" in p for p in problems)


def test_schema_covers_every_element_of_a5_1() -> None:
    """The written-out schema names every element A.5.1 defines."""
    expected = {
        "AuditMessage", "EventIdentification", "EventID", "EventTypeCode",
        "EventOutcomeDescription", "PurposeOfUse", "ActiveParticipant", "RoleIDCode",
        "MediaIdentifier", "MediaType", "AuditSourceIdentification", "AuditSourceTypeCode",
        "ParticipantObjectIdentification", "ParticipantObjectIDTypeCode",
        "ParticipantObjectName", "ParticipantObjectQuery", "ParticipantObjectDetail",
        "ParticipantObjectDescription", "MPPS", "Accession", "SOPClass", "Instance",
        "ParticipantObjectContainsStudy", "StudyIDs", "Encrypted", "Anonymized",
    }  # fmt: skip
    assert set(SCHEMA) == expected
