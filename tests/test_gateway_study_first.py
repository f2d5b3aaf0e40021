"""AP-1, "the archive is not asked for it": a study the caller may not see is decided from the
policy store alone, before the archive hears of it.

The archive's request log (Orthanc Lua filter) records paths without query strings, so these
proofs rest on paths: a refused request leaves no line at all; an allowed one whose hierarchy
is wrong leaves only the owner look-up of the series or instance, never a retrieval. The
query-string half (no `StudyInstanceUID=<B>` ever sent) is proven in the unit tests
(services/gateway/tests/test_dicomweb.py, every archive request recorded).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

MFA = "urn:zt:acr:mfa"
READ = "openid user/ImagingStudy.rs"


@pytest.fixture(scope="module")
def clinician(tokens: Any) -> str:
    """The north clinician: may read North General studies, never South Valley ones."""
    return str(tokens.user("north-clinician", READ, acr_values=MFA).access_token)


@pytest.fixture(scope="module")
def north() -> Any:
    from ztstack.demo_data import study

    return study("p001-ct-chest")


@pytest.fixture(scope="module")
def south() -> Any:
    from ztstack.demo_data import study

    return study("p002-ct-abdomen")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.control("AP-1")
def test_refused_study_reaches_nothing(
    stack: dict[str, Any], https: httpx.Client, archive_log: Any, clinician: str, south: Any
) -> None:
    s, se, sop = south.study_instance_uid, south.series_instance_uid, south.sop_instance_uid(1)
    base = stack["dicomweb_url"]
    paths = [
        f"/studies/{s}",
        f"/studies/{s}/metadata",
        f"/studies/{s}/series",
        f"/studies/{s}/series/{se}/metadata",
        f"/studies/{s}/series/{se}/instances",
        f"/studies/{s}/series/{se}/instances/{sop}/frames/1",
        f"/studies/{s}/series/{se}/instances/{sop}/rendered",
    ]
    mark = archive_log.mark()
    for path in paths:
        r = https.get(base + path, headers=bearer(clinician))
        assert r.status_code == 403, (path, r.status_code, r.text)
    # Not even an owner look-up: the policy store decided.
    assert archive_log.since(mark) == []


@pytest.mark.control("AP-1")
def test_qido_for_refused_study_forwards_nothing(
    stack: dict[str, Any],
    https: httpx.Client,
    archive_log: Any,
    clinician: str,
    north: Any,
    south: Any,
) -> None:
    base = stack["dicomweb_url"]
    mark = archive_log.mark()
    for level in ("studies", "series", "instances"):
        r = https.get(
            f"{base}/{level}",
            params={"StudyInstanceUID": south.study_instance_uid},
            headers=bearer(clinician),
        )
        assert r.status_code == 200 and r.json() == [], r.text
    assert archive_log.since(mark) == []
    # A list naming both: only the permitted study is forwarded and returned.
    r = https.get(
        f"{base}/studies",
        params={"StudyInstanceUID": f"{south.study_instance_uid},{north.study_instance_uid}"},
        headers=bearer(clinician),
    )
    assert r.status_code == 200
    assert [i["0020000D"]["Value"][0] for i in r.json()] == [north.study_instance_uid]


@pytest.mark.control("AP-1")
def test_hierarchy_mismatch_resolves_only_the_object(
    stack: dict[str, Any],
    https: httpx.Client,
    archive_log: Any,
    clinician: str,
    north: Any,
    south: Any,
) -> None:
    """`/studies/<north>/series/<south series>`: north is allowed, so the series' owner is asked
    (by series UID) and the mismatch is 404; nothing of south is retrieved."""
    base = stack["dicomweb_url"]
    n, se = north.study_instance_uid, south.series_instance_uid
    sop = south.sop_instance_uid(1)
    mark = archive_log.mark()
    r = https.get(f"{base}/studies/{n}/series/{se}/metadata", headers=bearer(clinician))
    assert r.status_code == 404, r.text
    r = https.get(
        stack["gateway_url"] + "/wado",
        params={"requestType": "WADO", "studyUID": n, "seriesUID": se, "objectUID": sop},
        headers=bearer(clinician),
    )
    assert r.status_code == 404, r.text
    # Owner look-ups only (none at all if a worker had them cached), never a retrieval.
    seen = archive_log.since(mark)
    assert {(e.method, e.uri) for e in seen} <= {
        ("GET", "/dicom-web/series"),
        ("GET", "/dicom-web/instances"),
    }, seen
