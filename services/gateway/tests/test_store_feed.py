"""Ingest after STOW and the change-feed poller, against a fake Orthanc (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dicomweb_gateway.archive.orthanc import OrthancSource
from dicomweb_gateway.policy import load_policy
from dicomweb_gateway.store import (
    ChangeFeedPoller,
    PolicyStore,
    load_ingest_rules,
)
from fake_orthanc import NORTH_CT, SOUTH_MR_HOLD, VIP_CT, FakeOrthanc
from policy_helpers import DEMO_INGEST_RULES, DEMO_POLICY

pytestmark = pytest.mark.anyio
RULES = load_ingest_rules(DEMO_INGEST_RULES, load_policy(DEMO_POLICY))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[PolicyStore]:
    policy_store = PolicyStore(f"sqlite:///{tmp_path}/gateway.db")
    policy_store.migrate()
    yield policy_store
    await policy_store.close()


async def test_dimse_studies_are_labelled_from_the_change_feed(store: PolicyStore) -> None:
    orthanc = FakeOrthanc()
    orthanc.add_study("s1", NORTH_CT)
    orthanc.add_other_change("NewInstance", "Instance")
    orthanc.add_study("s2", SOUTH_MR_HOLD)
    orthanc.add_study("s3", VIP_CT)
    archive = orthanc.archive()
    poller = ChangeFeedPoller(OrthancSource(archive), store, RULES, 0.01, batch=2)
    try:
        # before the poller ran, the studies are unknown: visible to nobody
        assert not (await store.study(NORTH_CT["StudyInstanceUID"])).known
        assert await poller.poll_once() == 3
        facts = await store.studies(
            [s["StudyInstanceUID"] for s in (NORTH_CT, SOUTH_MR_HOLD, VIP_CT)]
        )
        assert [sorted(f.labels) for f in facts.values()] == [
            ["site:north"],
            ["legal-hold", "site:south"],
            ["site:north", "vip"],
        ]
        assert facts[VIP_CT["StudyInstanceUID"]].patient_id == "ZT-P004"
        assert await store.cursor("archive") == 4
        # nothing new: nothing re-read
        before = len(orthanc.requests)
        assert await poller.poll_once() == 0
        assert len(orthanc.requests) == before + 1
        # the feed's requests name Orthanc ids only, never a StudyInstanceUID
        assert not any("1.2.826" in r for r in orthanc.requests)
    finally:
        await archive.close()


async def test_poller_survives_archive_errors(store: PolicyStore) -> None:
    orthanc = FakeOrthanc()
    orthanc.add_study("s1", NORTH_CT)
    orthanc.fail = True
    archive = orthanc.archive()
    poller = ChangeFeedPoller(OrthancSource(archive), store, RULES, 0.01)
    try:
        poller.start()
        await asyncio.sleep(0.05)
        assert await store.cursor("archive") == 0  # nothing skipped while the archive failed
        orthanc.fail = False
        for _ in range(100):
            if (await store.study(NORTH_CT["StudyInstanceUID"])).known:
                break
            await asyncio.sleep(0.02)
        assert (await store.study(NORTH_CT["StudyInstanceUID"])).labels == {"site:north"}
    finally:
        await poller.stop()
        await archive.close()


async def test_lookup_by_uid_after_stow(store: PolicyStore) -> None:
    orthanc = FakeOrthanc()
    orthanc.add_study("s2", SOUTH_MR_HOLD)
    archive = orthanc.archive()
    try:
        source = OrthancSource(archive)
        attributes = await source.study_attributes(SOUTH_MR_HOLD["StudyInstanceUID"])
        assert attributes is not None and attributes["AccessionNumber"] == "ZT-LH-0001"
        assert await source.study_attributes("1.2.3.4.404") is None
    finally:
        await archive.close()
