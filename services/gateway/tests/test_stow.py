"""stow.py and preamble.py: part validation, failure reasons, preamble control (AP-5)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from dicomweb_gateway.errors import GatewayError
from dicomweb_gateway.preamble import executable_kind, zero_multipart, zero_single
from dicomweb_gateway.stow import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH,
    merge_response,
    parse_stow,
    store_status,
)
from gateway_fakes import PE_PREAMBLE, dicom_file, multipart

STUDY = "1.2.826.0.1.9"


@pytest.mark.parametrize(
    ("preamble", "kind"),
    [
        (PE_PREAMBLE, "PE"),
        (b"MZ", "MZ"),
        (b"\x7fELF\x02", "ELF"),
        (b"\xfe\xed\xfa\xce", "Mach-O"),
        (b"\xfe\xed\xfa\xcf", "Mach-O"),
        (b"\xce\xfa\xed\xfe", "Mach-O"),
        (b"\xcf\xfa\xed\xfe", "Mach-O"),
        (b"\xca\xfe\xba\xbe", "Mach-O"),
        (b"#!/bin/sh", "script"),
        (bytes(128), None),
        (b"II*\x00", None),
    ],
)
def test_executable_kind(preamble: bytes, kind: str | None) -> None:
    assert executable_kind(preamble.ljust(128, b"\0")) == kind


@pytest.mark.control("AP-5")
@pytest.mark.parametrize("policy_zero", [False, True])
def test_preamble_policy(policy_zero: bool) -> None:
    ctype, body = multipart([dicom_file(study=STUDY, preamble=PE_PREAMBLE)])
    request = parse_stow(ctype, body, None, zero_preamble=policy_zero)
    assert request.alerts and request.alerts[0][0] == "preamble"
    part = request.parts[0]
    if policy_zero:
        assert part.failure is None and part.data[:128] == bytes(128)
    else:
        assert part.failure == CANNOT_UNDERSTAND and part.sop_instance_uid


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: b"hello", CANNOT_UNDERSTAND),
        (lambda: bytes(128) + b"DICM" + b"\x00" * 20, CANNOT_UNDERSTAND),
        (lambda: dicom_file(study="1.2.3"), DATA_SET_DOES_NOT_MATCH),
        (lambda: dicom_file(study=STUDY), None),
    ],
)
def test_part_reasons(make: object, reason: int | None) -> None:
    ctype, body = multipart([make()])  # type: ignore[operator]
    part = parse_stow(ctype, body, STUDY, zero_preamble=False).parts[0]
    assert part.failure == reason


@pytest.mark.parametrize(
    ("ctype", "status"),
    [
        ("application/dicom", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415),
        ('multipart/related; type="application/dicom"', 400),
    ],
)
def test_bad_content_type(ctype: str, status: int) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_stow(ctype, b"--x--", None, False)
    assert caught.value.status == status


def test_unterminated_multipart_refused() -> None:
    ctype, body = multipart([dicom_file(study=STUDY)])
    with pytest.raises(GatewayError):
        parse_stow(ctype, body[:-10], None, False)


def test_merge_and_status() -> None:
    ctype, body = multipart([b"junk"])
    refused = parse_stow(ctype, body, None, False).parts
    merged = merge_response({"00081199": {"vr": "SQ", "Value": [{}]}}, refused)
    assert store_status(merged) == 202
    assert store_status(merge_response(None, refused)) == 409
    assert store_status({"00081199": {"vr": "SQ", "Value": [{}]}}) == 200


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.control("AP-5")
@pytest.mark.parametrize("chunk", [1, 7, 131, 4096, 1 << 20])
def test_zero_outgoing_preambles(chunk: int) -> None:
    files = [dicom_file(preamble=PE_PREAMBLE), dicom_file(preamble=b"#!x"), dicom_file()]
    _, body = multipart(files, boundary="B0undary")

    async def collect() -> tuple[bytes, bytes]:
        multi = b"".join([c async for c in zero_multipart(_chunks(body, chunk), b"B0undary")])
        single = b"".join([c async for c in zero_single(_chunks(files[0], chunk))])
        return multi, single

    multi, single = asyncio.run(collect())
    assert len(multi) == len(body)
    assert multi.count(bytes(128) + b"DICM") == 3
    assert single[:128] == bytes(128) and single[128:] == files[0][128:]
