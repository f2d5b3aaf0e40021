"""The standard DICOMweb adapter's study index: no change feed, so STOW through the gateway plus a
bounded, resumable reconciliation walk over QIDO-RS keep it (archive/dicomweb.py). A recording
transport proves that nothing but PS3.18 resources under the DICOMweb root is ever asked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_gateway.archive.client import ArchiveClient
from dicomweb_gateway.archive.dicomweb import DicomwebArchive, encode_query
from dicomweb_gateway.parse import parse_qido
from dicomweb_gateway.policy import load_policy
from dicomweb_gateway.store import ChangeFeedPoller, PolicyStore, StudyIndex, load_ingest_rules
from fake_orthanc import NORTH_CT, SOUTH_MR_HOLD, VIP_CT
from policy_helpers import DEMO_INGEST_RULES, DEMO_POLICY

pytestmark = pytest.mark.anyio
RULES = load_ingest_rules(DEMO_INGEST_RULES, load_policy(DEMO_POLICY))
ROOT = "/dicom-web"
TAGS = {
    "StudyInstanceUID": ("0020000D", "UI"),
    "SeriesInstanceUID": ("0020000E", "UI"),
    "SOPInstanceUID": ("00080018", "UI"),
    "PatientID": ("00100020", "LO"),
    "InstitutionName": ("00080080", "LO"),
    "AccessionNumber": ("00080050", "SH"),
    "Modality": ("00080060", "CS"),
    "StudyDate": ("00080020", "DA"),
}


def as_json(attributes: dict[str, str]) -> dict[str, Any]:
    return {
        TAGS[k][0]: {"vr": TAGS[k][1], "Value": [v]} for k, v in attributes.items() if k in TAGS
    }


class QidoArchive:
    """A PS3.18-only archive: QIDO-RS with offset/limit, metadata; records every request."""

    def __init__(self) -> None:
        self.studies: dict[str, dict[str, str]] = {}
        self.requests: list[httpx.Request] = []

    def add(self, attributes: dict[str, str]) -> str:
        uid = attributes["StudyInstanceUID"]
        self.studies[uid] = attributes | {
            "SeriesInstanceUID": uid + ".1",
            "SOPInstanceUID": uid + ".1.1",
            "Modality": "CT",
        }
        return uid

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix(ROOT)
        params = httpx.QueryParams(request.url.query)
        parts = path.strip("/").split("/")
        if parts == ["studies"]:
            wanted = params.get("StudyInstanceUID")
            items = [s for uid, s in self.studies.items() if wanted in (None, uid)]
            offset, limit = int(params.get("offset", 0)), int(params.get("limit", 10**6))
            page = items[offset : offset + limit]
            body = [
                as_json(s) | {"00201206": {"vr": "IS", "Value": [1]}} for s in page
            ]  # NumberOfStudyRelatedSeries
            return httpx.Response(200, json=body)
        if len(parts) == 3 and parts[0] == "studies" and parts[1] in self.studies:
            study = self.studies[parts[1]]
            if parts[2] == "series":
                item = as_json(study) | {"00201209": {"vr": "IS", "Value": [1]}}
                return httpx.Response(200, json=[item])
            if parts[2] == "instances":
                return httpx.Response(200, json=[as_json(study)])
        if parts[-1] == "metadata" and len(parts) == 7 and parts[1] in self.studies:
            return httpx.Response(200, json=[as_json(self.studies[parts[1]])])
        return httpx.Response(404)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[PolicyStore]:
    policy_store = PolicyStore(f"sqlite:///{tmp_path}/gateway.db")
    policy_store.migrate()
    yield policy_store
    await policy_store.close()


def adapter(fake: QidoArchive) -> DicomwebArchive:
    http = ArchiveClient(
        "https://archive.invalid" + ROOT,
        "gateway",
        "secret",
        verify=False,
        transport=httpx.MockTransport(fake.handle),
    )
    return DicomwebArchive(http, "https://gateway.invalid")


async def test_reconciliation_walk_keeps_the_index_and_labels(store: PolicyStore) -> None:
    fake = QidoArchive()
    north, hold, vip = (fake.add(s) for s in (NORTH_CT, SOUTH_MR_HOLD, VIP_CT))
    archive = adapter(fake)
    source = archive.index_source
    assert source.has_change_feed is False
    index = StudyIndex(store)
    poller = ChangeFeedPoller(source, store, RULES, 0.01, batch=2, index=index)
    poller.reconciler.batch = 2  # bounded: two studies per QIDO page
    try:
        assert await poller.poll_once() == 0  # no change feed: nothing, and no request
        assert fake.requests == []
        # One step is one page; the walk resumes from the stored offset.
        seen, done = await poller.reconciler.step()
        assert (seen, done) == (2, False)
        assert await store.cursor(poller.reconciler.OFFSET) == 2
        seen, done = await poller.reconciler.step()
        assert (seen, done) == (1, True)
        assert await index.count() == 3
        assert (await store.study(north)).labels == frozenset({"site:north"})
        assert "legal-hold" in (await store.study(hold)).labels
        assert "vip" in (await store.study(vip)).labels
        owner = await index.owner("instance", north + ".1.1")
        assert owner is not None and owner.study_instance_uid == north
        # A study gone from the archive leaves the index at the end of the next full pass.
        # (Rows indexed in the same second as a pass starts are kept: a STOW may be racing it.)
        del fake.studies[vip]
        await asyncio.sleep(2.1)  # `started` is whole seconds, minus one
        await poller.reconciler.run_pass()
        assert await index.count() == 2
        # Ingest after a STOW reads one instance's metadata (no product REST).
        attributes = await archive.study_attributes(hold)
        assert attributes is not None and attributes["AccessionNumber"] == "ZT-LH-0001"
        assert await archive.study_attributes("1.2.3.404") is None
    finally:
        await archive.close()
    outside = [r.url.path for r in fake.requests if not r.url.path.startswith(ROOT + "/")]
    assert outside == []


def test_standard_query_encoding() -> None:
    """PS3.18 8.3.4.1: values percent-encoded as UTF-8 (no wildcard stand-ins), includefield by
    tag, the gateway's own pagination never forwarded."""
    query = parse_qido("PatientName=M%C3%BCller%20J*&limit=5&includefield=StudyDate", 100)
    assert encode_query(query, ("PatientID",)) == (
        "PatientName=M%C3%BCller%20J*&includefield=00080020&includefield=00100020"
    )
