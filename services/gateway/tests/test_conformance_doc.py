"""docs/conformance.md is generated from the route table and cannot drift (issue 14); the PS3.19
XML writer round-trips DICOM JSON."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicomweb_gateway.conformance import ROWS, SUPPORTED, render, route_of
from dicomweb_gateway.nativexml import multipart_xml, native_xml, parse_native_xml
from dicomweb_gateway.parse import Transaction

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "conformance.md"


def test_doc_is_generated_from_the_route_table() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/conformance.md is stale: run "
        "`python -m dicomweb_gateway conformance --output docs/conformance.md`"
    )


def test_every_transaction_has_a_row() -> None:
    named = {row.transaction for row in ROWS}
    assert {t.value for t in Transaction} <= named


@pytest.mark.control("AP-2")
def test_every_routed_row_is_routed_as_documented() -> None:
    """Each row whose example path is routable reaches exactly the transaction it names; every
    supported row is routable (nothing is documented that the gateway does not serve)."""
    for row in ROWS:
        routed = route_of(row)
        if row.status == SUPPORTED:
            assert routed is not None and routed.value == row.transaction, row
        elif routed is not None:
            assert routed.value == row.transaction, row


def test_native_xml_round_trip() -> None:
    dataset = {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "O'Brien^Pat&<Jr>"}]},
        "00201206": {"vr": "IS", "Value": [3]},
        "00081199": {
            "vr": "SQ",
            "Value": [{"00081150": {"vr": "UI", "Value": ["1.2.3"]}}],
        },
        "7FE00010": {"vr": "OW", "BulkDataURI": "https://gw/x?a=1&b=2"},
        "00081030": {"vr": "LO"},
    }
    body = native_xml(dataset)
    assert body.startswith(b"<?xml") and b"NativeDicomModel" in body
    back = parse_native_xml(body)
    assert back["00100010"]["Value"] == [{"Alphabetic": "O'Brien^Pat&<Jr>"}]
    assert back["00201206"]["Value"] == ["3"]
    assert back["00081199"]["Value"][0]["00081150"]["Value"] == ["1.2.3"]
    assert back["7FE00010"]["BulkDataURI"] == "https://gw/x?a=1&b=2"
    assert back["00081030"] == {"vr": "LO"}
    multi, content_type = multipart_xml([dataset, dataset])
    assert content_type.startswith('multipart/related; type="application/dicom+xml"; boundary=')
    assert multi.count(b"Content-Type: application/dicom+xml") == 2
    empty, _ = multipart_xml([])
    assert empty.endswith(b"--\r\n") and b"Content-Type" not in empty
