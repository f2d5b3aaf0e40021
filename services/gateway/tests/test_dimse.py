"""DV-4 in process: the DIMSE front door binds certificate, AE title and host of each device.

The end-to-end tests (tests/test_ingest_integrity.py, tests/test_devices.py) have one registered
device; here two devices prove that one device's certificate never admits the other's AE title,
and that a refused C-STORE is audited and stores nothing.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dicomweb_gateway.context import RequestContext
from dicomweb_gateway.dimse import REFUSED_NOT_AUTHORIZED, FrontDoor
from gateway_fakes import _self_signed, make_settings

pytestmark = pytest.mark.control("DV-4")


class Recorder:
    def __init__(self) -> None:
        self.records: list[RequestContext] = []

    async def record(self, ctx: RequestContext) -> None:
        self.records.append(ctx)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("ct1", "mr1", "stranger"):
        path = tmp_path / f"{name}.pem"
        _self_signed(path)
        out[name] = path
    return out


@pytest.fixture
def door(tmp_path: Path, certs: dict[str, Path], loop: asyncio.AbstractEventLoop) -> FrontDoor:
    devices = [
        {"name": "ct1", "ae_title": "CT1", "host": "127.0.0.1", "certificate": str(certs["ct1"])},
        {"name": "mr1", "ae_title": "MR1", "host": "10.0.0.5", "certificate": str(certs["mr1"])},
    ]
    settings = make_settings(tmp_path, dimse={"devices": devices})
    return FrontDoor(settings, archive=None, authorizer=None, auditor=Recorder(), loop=loop)


def event(cert: Path | None, ae_title: str, address: str) -> Any:
    der = ssl.PEM_cert_to_DER_cert(cert.read_text()) if cert else None
    sock = SimpleNamespace(getpeercert=lambda binary_form: der)
    return SimpleNamespace(
        assoc=SimpleNamespace(
            requestor=SimpleNamespace(ae_title=ae_title, address=address),
            dul=SimpleNamespace(socket=SimpleNamespace(socket=sock)),
            abort=lambda: None,
        )
    )


@pytest.mark.parametrize(
    ("cert", "ae_title", "address", "device", "why"),
    [
        ("ct1", "CT1", "127.0.0.1", "ct1", ""),
        ("mr1", "MR1", "10.0.0.5", "mr1", ""),
        ("ct1", "MR1", "127.0.0.1", None, "is not ct1's"),  # a registered title, wrong key
        ("mr1", "CT1", "10.0.0.5", None, "is not mr1's"),
        ("ct1", "CT1", "10.0.0.9", None, "not 127.0.0.1"),
        ("stranger", "CT1", "127.0.0.1", None, "no registered device"),
        (None, "CT1", "127.0.0.1", None, "no client certificate"),
    ],
)
def test_certificate_title_and_host_must_agree(
    door: FrontDoor,
    certs: dict[str, Path],
    cert: str | None,
    ae_title: str,
    address: str,
    device: str | None,
    why: str,
) -> None:
    found, reason = door.device_of(event(certs[cert] if cert else None, ae_title, address))
    assert (found.name if found else None) == device
    assert why in reason


def test_unproven_device_store_is_refused_and_audited(
    door: FrontDoor, certs: dict[str, Path]
) -> None:
    """The store handler refuses before reading the dataset (archive and authorizer are None:
    touching them would fail the test) and writes a Node Authentication alert."""
    assert door.on_store(event(certs["ct1"], "MR1", "127.0.0.1")) == REFUSED_NOT_AUTHORIZED
    assert isinstance(door.auditor, Recorder)
    (ctx,) = door.auditor.records
    assert (ctx.status, ctx.error_code, ctx.action) == (401, "unauthorized", "store")
    assert "not ct1's" in (ctx.error_detail or "")


def test_unproven_association_is_aborted_and_audited(
    door: FrontDoor, certs: dict[str, Path]
) -> None:
    aborted = threading.Event()
    e = event(certs["mr1"], "CT1", "10.0.0.5")
    e.assoc.abort = aborted.set
    door.on_established(e)
    assert aborted.wait(5)
    assert isinstance(door.auditor, Recorder)
    assert [c.status for c in door.auditor.records] == [401]
