"""The Authorizer hooks over the policy store: what the DICOMweb routes see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dicomweb_gateway.archive.orthanc import OrthancSource
from dicomweb_gateway.authorize import Authorizer
from dicomweb_gateway.context import Action, Principal, RequestContext
from dicomweb_gateway.errors import GatewayError
from dicomweb_gateway.policy import PolicyError
from fake_orthanc import NORTH_CT, SOUTH_MR_HOLD, VIP_CT, FakeOrthanc
from policy_helpers import DEMO_INGEST_RULES, DEMO_POLICY, NOW, principal

pytestmark = pytest.mark.anyio
NORTH_UID, HOLD_UID, VIP_UID = (s["StudyInstanceUID"] for s in (NORTH_CT, SOUTH_MR_HOLD, VIP_CT))
UNKNOWN_UID = "1.2.826.0.1.3680043.10.1.99"
MFA = "urn:zt:acr:mfa"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings(tmp_path: Path, policy: Path = DEMO_POLICY) -> SimpleNamespace:
    return SimpleNamespace(
        database_url=f"sqlite:///{tmp_path}/gateway.db",
        policy=SimpleNamespace(
            file=policy, ingest_rules_file=DEMO_INGEST_RULES, change_feed_interval_seconds=0.05
        ),
    )


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Authorizer, FakeOrthanc]]:
    orthanc = FakeOrthanc()
    for oid, tags in (("n", NORTH_CT), ("h", SOUTH_MR_HOLD), ("v", VIP_CT)):
        orthanc.add_study(oid, tags)
    archive = orthanc.archive()
    authorizer = Authorizer.from_settings(settings(tmp_path), archive)  # type: ignore[arg-type]
    authorizer.clock = lambda: NOW
    assert isinstance(authorizer.source, OrthancSource)
    await authorizer.on_stored(ctx(None), [NORTH_UID, HOLD_UID, VIP_UID])
    yield authorizer, orthanc
    await authorizer.close()
    await archive.close()


def ctx(who: Principal | None) -> RequestContext:
    return RequestContext("r1", "GET", "/dicom-web/studies", "127.0.0.1", principal=who)


NORTH = principal("user/ImagingStudy.rs", "clinician", "/site-north", acr=MFA)
SOUTH_RADIOLOGIST = principal(
    "user/ImagingStudy.rs user/ImagingStudy.d", "radiologist", "/site-south", acr=MFA
)


@pytest.mark.control("AP-1")
async def test_check_study_allows_and_records(setup: tuple[Authorizer, FakeOrthanc]) -> None:
    authorizer, _ = setup
    context = ctx(NORTH)
    await authorizer.check_study(context, Action.READ, NORTH_UID)
    assert context.decisions[-1].allow
    assert "allow:north-clinical" in context.decisions[-1].reasons


@pytest.mark.control("AP-1")
@pytest.mark.parametrize("uid", [HOLD_UID, UNKNOWN_UID, "*", f"{NORTH_UID}\\{HOLD_UID}", ""])
async def test_check_study_denies_with_403(setup: tuple[Authorizer, FakeOrthanc], uid: str) -> None:
    authorizer, _ = setup
    context = ctx(NORTH)
    with pytest.raises(GatewayError) as raised:
        await authorizer.check_study(context, Action.READ, uid)
    assert raised.value.status == 403
    assert raised.value.headers["WWW-Authenticate"].startswith('Bearer realm="dicomweb"')
    assert 'error="insufficient_scope"' in raised.value.headers["WWW-Authenticate"]
    assert not context.decisions[-1].allow


@pytest.mark.control("ID-3")
async def test_vip_read_without_mfa_is_a_step_up_challenge(
    setup: tuple[Authorizer, FakeOrthanc],
) -> None:
    authorizer, _ = setup
    weak = principal("user/ImagingStudy.rs", "clinician vip-access", "/site-north")
    with pytest.raises(GatewayError) as raised:
        await authorizer.check_study(ctx(weak), Action.READ, VIP_UID)
    assert raised.value.status == 401
    challenge = raised.value.headers["WWW-Authenticate"]
    assert 'error="insufficient_user_authentication"' in challenge
    assert 'acr_values="urn:zt:acr:mfa urn:zt:acr:phr"' in challenge


@pytest.mark.control("ID-4")
async def test_delete_with_stale_login_is_challenged_before_the_study_is_known(
    setup: tuple[Authorizer, FakeOrthanc],
) -> None:
    authorizer, _ = setup
    stale = principal("user/ImagingStudy.d", "radiologist", "/site-south", acr=MFA, auth_age=900)
    with pytest.raises(GatewayError) as raised:
        await authorizer.check_action(ctx(stale), Action.DELETE)
    assert raised.value.status == 401
    assert 'max_age="300"' in raised.value.headers["WWW-Authenticate"]


@pytest.mark.control("DA-2")
async def test_legal_hold_is_never_deleted(setup: tuple[Authorizer, FakeOrthanc]) -> None:
    authorizer, _ = setup
    await authorizer.check_action(ctx(SOUTH_RADIOLOGIST), Action.DELETE)
    with pytest.raises(GatewayError) as raised:
        await authorizer.check_study(ctx(SOUTH_RADIOLOGIST), Action.DELETE, HOLD_UID)
    assert raised.value.status == 403
    assert "deny:legal-hold-no-delete" in raised.value.detail


@pytest.mark.control("AP-1")
async def test_permitted_studies_filters(setup: tuple[Authorizer, FakeOrthanc]) -> None:
    authorizer, _ = setup
    everything = {NORTH_UID, HOLD_UID, VIP_UID, UNKNOWN_UID}
    assert await authorizer.permitted_studies(ctx(NORTH), Action.SEARCH, everything) == {NORTH_UID}
    assert await authorizer.permitted_studies(
        ctx(SOUTH_RADIOLOGIST), Action.SEARCH, everything
    ) == {HOLD_UID}
    no_scope = principal("openid", "clinician", "/site-north")
    assert await authorizer.permitted_studies(ctx(no_scope), Action.SEARCH, everything) == set()
    assert await authorizer.permitted_studies(ctx(None), Action.SEARCH, everything) == set()


@pytest.mark.control("AP-1")
async def test_decide_studies_agrees_with_decide_study_in_one_read(
    setup: tuple[Authorizer, FakeOrthanc],
) -> None:
    """A page of studies is decided with one read of the facts, each decision the same as the
    study's own decide_study (the memo never mixes two studies' verdicts)."""
    authorizer, _ = setup
    everything = {NORTH_UID, HOLD_UID, VIP_UID, UNKNOWN_UID}
    reads: list[int] = []
    studies = authorizer._studies

    async def counted(uids: Any) -> Any:
        reads.append(len(set(uids)))
        return await studies(uids)

    authorizer._studies = counted  # type: ignore[method-assign]
    for who in (NORTH, SOUTH_RADIOLOGIST, None):
        reads.clear()
        batch = await authorizer.decide_studies(ctx(who), Action.SEARCH, everything)
        assert len(reads) <= 1
        for uid in everything:
            single = await authorizer.decide_study(ctx(who), Action.SEARCH, uid)
            assert batch[uid].allow == single.allow, (who, uid)
            assert batch[uid].reasons == single.reasons, (who, uid)


@pytest.mark.control("DA-2")
async def test_break_glass_grant_opens_the_vip_study(
    setup: tuple[Authorizer, FakeOrthanc],
) -> None:
    authorizer, _ = setup
    er = principal("user/ImagingStudy.rs", "clinician break-glass", "/site-north", acr=MFA)
    assert await authorizer.permitted_studies(ctx(er), Action.SEARCH, {VIP_UID}) == set()
    await authorizer.store.grant_break_glass(
        er.subject, er.issuer, VIP_UID, "unconscious", 600, datetime.fromtimestamp(NOW, UTC)
    )
    assert await authorizer.permitted_studies(ctx(er), Action.SEARCH, {VIP_UID}) == {VIP_UID}
    await authorizer.check_study(ctx(er), Action.READ, VIP_UID)


async def test_on_stored_failure_does_not_raise(setup: tuple[Authorizer, FakeOrthanc]) -> None:
    authorizer, orthanc = setup
    orthanc.fail = True
    await authorizer.on_stored(ctx(NORTH), [UNKNOWN_UID])
    assert not (await authorizer.store.study(UNKNOWN_UID)).known


async def test_ready(setup: tuple[Authorizer, FakeOrthanc]) -> None:
    authorizer, _ = setup
    assert await authorizer.ready()


async def test_change_feed_runs_in_the_lifespan(tmp_path: Path) -> None:
    orthanc = FakeOrthanc()
    archive = orthanc.archive()
    authorizer = Authorizer.from_settings(settings(tmp_path), archive)  # type: ignore[arg-type]
    async with authorizer.lifespan():
        orthanc.add_study("n", NORTH_CT)  # arrives by DIMSE
        for _ in range(100):
            if (await authorizer.store.study(NORTH_UID)).known:
                break
            await asyncio.sleep(0.02)
        assert (await authorizer.store.study(NORTH_UID)).labels == {"site:north"}
    await archive.close()


def test_invalid_policy_stops_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: 1\nlabels: [a]\nrules: [{id: x, effect: allow, labels_any: [b]}]\n")
    with pytest.raises(PolicyError, match="unknown label 'b'"):
        Authorizer.from_settings(settings(tmp_path, bad))  # type: ignore[arg-type]
    assert not (tmp_path / "gateway.db").exists()  # nothing started


@pytest.mark.control("AP-1")
async def test_cache_sees_another_workers_label_change_at_once(
    setup: tuple[Authorizer, FakeOrthanc], tmp_path: Path
) -> None:
    """Facts are cached per worker, but a label change committed by ANOTHER worker (here a
    second Authorizer on the same store file) takes effect on this worker's next decision."""
    authorizer, _ = setup
    await authorizer.check_study(ctx(NORTH), Action.READ, NORTH_UID)
    assert NORTH_UID in authorizer._cache.facts  # cached after the first decision
    other = Authorizer.from_settings(settings(tmp_path))  # type: ignore[arg-type]
    try:
        await other.store.change_labels(NORTH_UID, ["vip"], ["site:north"], "admin", "test")
    finally:
        await other.close()
    with pytest.raises(GatewayError):
        await authorizer.check_study(ctx(NORTH), Action.READ, NORTH_UID)
    assert await authorizer.permitted_studies(ctx(NORTH), Action.SEARCH, {NORTH_UID}) == set()


@pytest.mark.control("DA-2")
async def test_cached_grant_expires_on_time(
    setup: tuple[Authorizer, FakeOrthanc], tmp_path: Path
) -> None:
    authorizer, _ = setup
    er = principal("user/ImagingStudy.rs", "clinician break-glass", "/site-north", acr=MFA)
    other = Authorizer.from_settings(settings(tmp_path))  # type: ignore[arg-type]
    try:
        await other.store.grant_break_glass(
            er.subject, er.issuer, VIP_UID, "unconscious", 60, datetime.fromtimestamp(NOW, UTC)
        )
    finally:
        await other.close()
    await authorizer.check_study(ctx(er), Action.READ, VIP_UID)
    assert (er.subject, er.issuer) in authorizer._cache.grants
    authorizer.clock = lambda: NOW + 61  # no store change: only the clock moves
    with pytest.raises(GatewayError):
        await authorizer.check_study(ctx(er), Action.READ, VIP_UID)


async def test_unknown_studies_are_not_cached(setup: tuple[Authorizer, FakeOrthanc]) -> None:
    authorizer, _ = setup
    assert await authorizer.permitted_studies(ctx(NORTH), Action.SEARCH, {UNKNOWN_UID}) == set()
    assert UNKNOWN_UID not in authorizer._cache.facts


async def test_on_stored_skips_known_studies(setup: tuple[Authorizer, FakeOrthanc]) -> None:
    """Storing into a study the store already knows does not read the (growing) study back
    from the archive: it was labelled from the same first instance when it became known."""
    authorizer, orthanc = setup
    before = len(orthanc.requests)
    await authorizer.on_stored(ctx(NORTH), [NORTH_UID])
    assert len(orthanc.requests) == before
    assert (await authorizer.store.study(NORTH_UID)).labels == {"site:north"}
