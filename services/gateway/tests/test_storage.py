"""AP-7 in process: the archive stores exactly what the gateway authorized.

Each attack of issue 10 against the real pipeline and a fake archive that stores what it is sent
(gateway_fakes.FakeArchive): after the request, the assertions read the archive's state, not the
status code alone.
"""

from __future__ import annotations

import io
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_gateway.app import create_app
from dicomweb_gateway.context import Action, RequestContext
from dicomweb_gateway.errors import insufficient_scope
from dicomweb_gateway.stow import encode_multipart
from gateway_fakes import (
    PUBLIC_URL,
    FakeArchive,
    FakeIdp,
    IndexDouble,
    MemoryIdentities,
    dicom_file,
    make_settings,
    multipart,
)

pytestmark = [pytest.mark.anyio, pytest.mark.control("AP-7")]

VICTIM, VICTIM_SERIES, VICTIM_SOP = "1.2.826.0.9.1", "1.2.826.0.9.1.1", "1.2.826.0.9.1.1.1"
OWN, OWN_SERIES = "1.2.826.0.8.1", "1.2.826.0.8.1.1"


class AllButVictim(IndexDouble):
    """Authorizer double: store anywhere except the victim study (a legal-hold study)."""

    def __init__(self) -> None:
        self.store = MemoryIdentities()
        self.stored: list[str] = []
        self.claims: list[Any] = []

    async def check_action(self, ctx: RequestContext, action: Action) -> None:
        return None

    async def check_study(self, ctx: RequestContext, action: Action, uid: str) -> None:
        if uid == VICTIM:
            raise insufficient_scope("legal hold")

    async def permitted_studies(self, ctx: RequestContext, action: Action, uids: Any) -> set[str]:
        return {u for u in uids if u != VICTIM}

    async def on_stored(
        self, ctx: RequestContext, uids: Any, parts: Any = (), claims: Any = ()
    ) -> None:
        self.stored.extend(uids)
        self.claims.extend(claims)


class Auditor:
    def __init__(self) -> None:
        self.records: list[RequestContext] = []

    async def preflight(self) -> None:
        return None

    async def record(self, ctx: RequestContext) -> None:
        self.records.append(ctx)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def archive() -> FakeArchive:
    fake = FakeArchive()
    fake.add(VICTIM, VICTIM_SERIES, VICTIM_SOP, "ZT-SOUTH")
    fake.add(OWN, OWN_SERIES, OWN_SERIES + ".1", "ZT-NORTH")
    return fake


@pytest.fixture
def auditor() -> Auditor:
    return Auditor()


@pytest.fixture
def authorizer() -> AllButVictim:
    return AllButVictim()


@pytest.fixture
async def client(
    tmp_path: Path, archive: FakeArchive, auditor: Auditor, authorizer: AllButVictim
) -> AsyncIterator[httpx.AsyncClient]:
    idp = FakeIdp()
    app = create_app(
        make_settings(tmp_path),
        archive_transport=archive.transport(),
        idp_transport=idp.transport(),
        authorizer=authorizer,
        auditor=auditor,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.9", 5555))
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as c:
            c.headers["Authorization"] = "Bearer " + idp.token()
            yield c


def instances(archive: FakeArchive, study: str) -> set[str]:
    return {sop for series in archive.studies.get(study, {}).values() for sop in series}


def element(tag: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return (
        struct.pack("<HHH", tag >> 16, tag & 0xFFFF, 0)[:4]
        + b"UI"
        + struct.pack("<H", len(value))
        + value
    )


def with_duplicate_study(data: bytes, first: str) -> bytes:
    """The same file with a second (0020,000D) placed before the real one: DCMTK keeps the
    first (`first`), pydicom the last."""
    at = data.find(struct.pack("<HH", 0x0020, 0x000D) + b"UI")
    return data[:at] + element(0x0020000D, first.encode()) + data[at:]


async def stow(client: httpx.AsyncClient, parts: list[bytes], path: str = "") -> httpx.Response:
    content_type, body = multipart(parts)
    return await client.post(
        f"/dicom-web/studies{path}", content=body, headers={"Content-Type": content_type}
    )


async def test_duplicate_study_uid_is_refused_before_the_archive(
    client: httpx.AsyncClient, archive: FakeArchive, auditor: Auditor
) -> None:
    """Finding 1: a dataset naming the victim first and a fresh study last is refused."""
    hostile = with_duplicate_study(dicom_file(patient_id="ZT-NORTH"), VICTIM)
    before = instances(archive, VICTIM)
    r = await stow(client, [hostile])
    assert r.status_code == 409
    assert instances(archive, VICTIM) == before
    assert not [q for q in archive.requests if q.method == "POST"]
    assert any(kind == "malformed-dicom" for kind, _ in auditor.records[-1].alerts)


async def test_archive_is_sent_a_canonical_body_with_a_fresh_boundary(
    client: httpx.AsyncClient, archive: FakeArchive
) -> None:
    """Finding 2: whatever a part holds, the archive gets exactly the parts authorized."""
    old_boundary = b"--zt-gateway-stow-boundary-7f3c"
    smuggled = dicom_file(study=VICTIM, patient_id="ZT-SOUTH")
    pixel = b"\r\n" + old_boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + smuggled
    carrier = dicom_file(patient_id="ZT-NORTH", pixel=pixel + b"\0" * (len(pixel) % 2))
    before = instances(archive, VICTIM)
    r = await stow(client, [carrier])
    assert r.status_code == 200, r.text
    assert instances(archive, VICTIM) == before
    posted = [q for q in archive.requests if q.method == "POST"]
    assert len(posted) == 1
    boundary = posted[0].headers["content-type"].split("boundary=")[1].encode()
    assert boundary not in carrier and len(boundary) > 60
    assert posted[0].content.count(b"--" + boundary) == 2  # one part, one close delimiter


def test_boundaries_never_repeat_and_never_occur_in_a_part() -> None:
    from dicomweb_gateway.stow import Part

    parts = [Part(dicom_file())]
    boundaries = {encode_multipart(parts)[0] for _ in range(200)}
    assert len(boundaries) == 200
    assert not any(b in parts[0].data for b in boundaries)


async def test_series_uid_of_another_study_is_refused(
    client: httpx.AsyncClient, archive: FakeArchive, auditor: Auditor
) -> None:
    """Finding 4's first step: a new study may not reuse a series UID of the legal-hold one."""
    r = await stow(client, [dicom_file(series=VICTIM_SERIES, patient_id="ZT-NORTH")])
    assert r.status_code == 409
    assert not [q for q in archive.requests if q.method == "POST"]
    assert instances(archive, VICTIM) == {VICTIM_SOP}
    assert any(kind == "uid-collision" for kind, _ in auditor.records[-1].alerts)


async def test_sop_uid_of_another_study_is_refused(
    client: httpx.AsyncClient, archive: FakeArchive
) -> None:
    r = await stow(client, [dicom_file(sop=VICTIM_SOP, patient_id="ZT-NORTH")])
    assert r.status_code == 409
    assert not [q for q in archive.requests if q.method == "POST"]


async def test_patient_other_than_the_studys_is_refused(
    client: httpx.AsyncClient, archive: FakeArchive
) -> None:
    """Finding 3: an instance for an existing study with another PatientID."""
    r = await stow(client, [dicom_file(study=OWN, patient_id="RT-X")], f"/{OWN}")
    assert r.status_code == 409
    assert archive.patients[OWN] == "ZT-NORTH"
    assert len(instances(archive, OWN)) == 1


async def test_one_request_cannot_split_a_series_over_two_studies(
    client: httpx.AsyncClient, archive: FakeArchive
) -> None:
    series = "1.2.826.0.7.1.1"
    r = await stow(
        client,
        [
            dicom_file(study="1.2.826.0.7.1", series=series, patient_id="P"),
            dicom_file(study="1.2.826.0.7.2", series=series, patient_id="P"),
        ],
    )
    assert r.status_code == 202
    assert "1.2.826.0.7.2" not in archive.studies


async def test_concurrent_claims_cannot_both_pass(
    client: httpx.AsyncClient, archive: FakeArchive
) -> None:
    """The claim is recorded with the check: a second study reusing a claimed series fails."""
    series = "1.2.826.0.6.1.1"
    first = await stow(client, [dicom_file(study="1.2.826.0.6.1", series=series)])
    assert first.status_code == 200
    archive.studies.pop("1.2.826.0.6.1")  # the archive has not indexed it yet
    second = await stow(client, [dicom_file(study="1.2.826.0.6.2", series=series)])
    assert second.status_code == 409
    assert "1.2.826.0.6.2" not in archive.studies


async def test_instance_landing_elsewhere_is_deleted_and_alerted(
    client: httpx.AsyncClient, archive: FakeArchive, auditor: Auditor
) -> None:
    """Defence in depth: if the archive reads a part differently than the gateway did, the
    instance it filed in another study is removed again and the request says so."""

    def first_wins(data: bytes) -> pydicom.Dataset:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.StudyInstanceUID = VICTIM
        ds.SeriesInstanceUID = VICTIM_SERIES
        return ds

    archive.reader = first_wins
    r = await stow(client, [dicom_file(patient_id="ZT-SOUTH")])
    assert r.status_code == 409, r.text
    assert instances(archive, VICTIM) == {VICTIM_SOP}
    assert any(kind == "integrity" for kind, _ in auditor.records[-1].alerts)


async def test_delete_addresses_the_series_of_the_authorized_study_only(
    client: httpx.AsyncClient, archive: FakeArchive
) -> None:
    """Finding 4: a series UID present in two studies is deleted only in the one named."""
    archive.add(OWN, VICTIM_SERIES, "1.2.826.0.8.1.9.1", "ZT-NORTH")
    r = await client.delete(f"/dicom-web/studies/{OWN}/series/{VICTIM_SERIES}")
    assert r.status_code == 204
    assert instances(archive, VICTIM) == {VICTIM_SOP}
    assert VICTIM_SERIES not in archive.studies[OWN]


def _lookups(archive: FakeArchive) -> list[str]:
    """The archive's UID look-ups (QIDO with a UID list), by level."""
    return [
        q.url.path.rsplit("/", 1)[1]
        for q in archive.requests
        if q.method == "GET" and q.url.path.rsplit("/", 1)[1] in ("studies", "series", "instances")
    ]


async def test_appending_to_a_known_series_looks_up_only_the_new_instance(
    client: httpx.AsyncClient, archive: FakeArchive
) -> None:
    """Recorded claims answer for the study and series; the archive is asked about new UIDs."""
    study, series = "1.2.826.0.8.77", "1.2.826.0.8.77.1"
    first = await stow(client, [dicom_file(study=study, series=series, patient_id="ZT-NORTH")])
    assert first.status_code == 200, first.text
    assert sorted(_lookups(archive)) == ["instances", "series", "studies"]
    archive.requests.clear()
    second = await stow(client, [dicom_file(study=study, series=series, patient_id="ZT-NORTH")])
    assert second.status_code == 200, second.text
    assert _lookups(archive) == ["instances"]
    assert len(instances(archive, study)) == 2


async def test_a_recorded_claim_refuses_even_when_the_archive_has_forgotten(
    client: httpx.AsyncClient, archive: FakeArchive, auditor: Auditor
) -> None:
    """A series recorded under one study cannot be reused under another, whatever the archive
    answers now (claims are checked before, and instead of, the archive for known UIDs)."""
    study, series = "1.2.826.0.8.78", "1.2.826.0.8.78.1"
    r = await stow(client, [dicom_file(study=study, series=series, patient_id="ZT-NORTH")])
    assert r.status_code == 200, r.text
    archive.studies.pop(study)  # the archive no longer answers for it
    archive.requests.clear()
    other = "1.2.826.0.8.79"
    r = await stow(client, [dicom_file(study=other, series=series, patient_id="ZT-NORTH")])
    assert r.status_code == 409
    assert not [q for q in archive.requests if q.method == "POST"]
    assert other not in archive.studies
    assert any(kind == "uid-collision" for kind, _ in auditor.records[-1].alerts)


async def test_the_index_counts_only_what_the_archive_kept(
    client: httpx.AsyncClient, archive: FakeArchive, authorizer: AllButVictim
) -> None:
    """Of two new series in one request, the one whose instance the archive filed elsewhere
    (refused, deleted again) is not added to the study index's counts; the kept one is."""
    kept_series, lost_series = OWN + ".21", OWN + ".22"

    def misfile(data: bytes) -> pydicom.Dataset:
        ds = pydicom.dcmread(io.BytesIO(data))
        if ds.SeriesInstanceUID == lost_series:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = VICTIM, VICTIM_SERIES
        return ds

    archive.reader = misfile
    parts = [
        dicom_file(study=OWN, series=s, patient_id="ZT-NORTH") for s in (kept_series, lost_series)
    ]
    r = await stow(client, parts)
    assert r.status_code == 202, r.text
    # The archive: the misfiled instance is gone again, the kept one is where it was sent.
    assert instances(archive, VICTIM) == {VICTIM_SOP}
    assert set(archive.studies[OWN]) == {OWN_SERIES, kept_series}
    counted = {(c.level, c.uid) for c in authorizer.claims}
    assert ("series", kept_series) in counted
    assert ("series", lost_series) not in counted
    assert [c.series_instance_uid for c in authorizer.claims if c.level == "instance"] == [
        kept_series
    ]
