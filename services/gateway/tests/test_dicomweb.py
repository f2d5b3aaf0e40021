"""The gateway end to end in process: fake archive (httpx.MockTransport), real pipeline.

Every test runs with both archive adapters in front of the same Orthanc look-alike:
`archive.kind: orthanc` and `archive.kind: dicomweb` (its `url` the look-alike's `/dicom-web`
root). With the standard adapter, the recording transport proves after each test that no
request left the DICOMweb root: no product REST call at all (issue 17).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_gateway.app import create_app
from dicomweb_gateway.context import Action, RequestContext
from dicomweb_gateway.errors import insufficient_scope, service_unavailable
from gateway_fakes import (
    ARCHIVE_URL,
    PE_PREAMBLE,
    PUBLIC_URL,
    FakeArchive,
    FakeIdp,
    IndexDouble,
    MemoryIdentities,
    dicom_file,
    make_settings,
    multipart,
)

A, B = "1.2.826.0.1.1", "1.2.826.0.1.2"
A_SERIES, B_SERIES = "1.2.826.0.1.1.1", "1.2.826.0.1.2.1"
A_SOP, B_SOP = "1.2.826.0.1.1.1.1", "1.2.826.0.1.2.1.1"


class OnlyStudyA(IndexDouble):
    """Authorizer double: the caller may touch study A only."""

    indexed = (A, B, *(f"1.2.826.0.1.1{n}" for n in range(5)))

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.store = MemoryIdentities()

    async def check_action(self, ctx: RequestContext, action: Action) -> None:
        needed = {
            Action.SEARCH: ".rs",
            Action.READ: ".rs",
            Action.STORE: ".c",
            Action.DELETE: ".d",
        }[action]
        assert ctx.principal is not None
        if not any(s.endswith(needed) for s in ctx.principal.scopes):
            raise insufficient_scope("scope missing")

    async def check_study(self, ctx: RequestContext, action: Action, uid: str) -> None:
        await self.check_action(ctx, action)
        if uid != A:
            raise insufficient_scope("study not permitted")

    async def permitted_studies(self, ctx: RequestContext, action: Action, uids: Any) -> set[str]:
        return {u for u in uids if u == A}

    async def on_stored(
        self, ctx: RequestContext, uids: Any, parts: Any = (), claims: Any = ()
    ) -> None:
        self.stored.extend(uids)


class RecordingAuditor:
    def __init__(self) -> None:
        self.records: list[RequestContext] = []
        self.down = False
        self.fail_record = False

    async def preflight(self) -> None:
        if self.down:
            raise service_unavailable("audit store down")

    async def record(self, ctx: RequestContext) -> None:
        if self.fail_record:
            raise service_unavailable("audit store lost")
        self.records.append(ctx)


@pytest.fixture
def archive() -> FakeArchive:
    fake = FakeArchive()
    fake.add(A, A_SERIES, A_SOP, "ZT-P001")
    fake.add(B, B_SERIES, B_SOP, "ZT-P002")
    for n in range(5):
        fake.add(f"1.2.826.0.1.1{n}", f"1.2.826.0.1.1{n}.1", f"1.2.826.0.1.1{n}.1.1")
    return fake


@pytest.fixture
def idp() -> FakeIdp:
    return FakeIdp()


@pytest.fixture
def auditor() -> RecordingAuditor:
    return RecordingAuditor()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture(params=["orthanc", "dicomweb"])
def kind(request: pytest.FixtureRequest) -> str:
    """The archive adapter under test."""
    return str(request.param)


@pytest.fixture
async def client(
    tmp_path: Path,
    archive: FakeArchive,
    idp: FakeIdp,
    auditor: RecordingAuditor,
    settings_overrides: dict[str, Any],
    kind: str,
) -> AsyncIterator[httpx.AsyncClient]:
    overrides = dict(settings_overrides)
    if kind == "dicomweb":
        overrides["archive"] = {"kind": "dicomweb", "url": ARCHIVE_URL + "/dicom-web"}
    settings = make_settings(tmp_path, **overrides)
    app = create_app(
        settings,
        archive_transport=archive.transport(),
        idp_transport=idp.transport(),
        authorizer=OnlyStudyA(),
        auditor=auditor,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.9", 5555))
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as c:
            c.app = app  # type: ignore[attr-defined]
            yield c
    if kind == "dicomweb":
        # The recording transport: only PS3.18 resources under the DICOMweb root were asked.
        outside = [
            f"{r.method} {r.url.path}"
            for r in archive.requests
            if not r.url.path.startswith("/dicom-web/")
        ]
        assert outside == [], outside


def auth(idp: FakeIdp, **claims: Any) -> dict[str, str]:
    return {"Authorization": "Bearer " + idp.token(**claims)}


def no_leak(response: httpx.Response) -> None:
    text = response.text.lower()
    for marker in ("orthanc", "archive.test", "1.10.1", "traceback"):
        assert marker not in text
    headers = " ".join(f"{k}: {v}" for k, v in response.headers.items()).lower()
    assert "orthanc" not in headers and "archive.test" not in headers
    assert "server" not in response.headers


@pytest.mark.anyio
@pytest.mark.control("AP-1")
async def test_qido_filters_and_paginates(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive
) -> None:
    r = await client.get("/dicom-web/studies", headers=auth(idp))
    assert r.status_code == 200
    uids = [item["0020000D"]["Value"][0] for item in r.json()]
    assert uids == [A]
    assert r.json()[0]["00081190"]["Value"][0] == f"{PUBLIC_URL}/dicom-web/studies/{A}"
    no_leak(r)
    # offset 1 over permitted results only: empty, never a hidden study.
    r = await client.get("/dicom-web/studies?offset=1&limit=1", headers=auth(idp))
    assert r.json() == [], r.text
    sent = archive.requests[-1]
    assert "limit" not in str(sent.url) and "includefield=0020000D" in str(sent.url)


@pytest.mark.anyio
async def test_qido_search_for_series_of_other_study(
    client: httpx.AsyncClient, idp: FakeIdp
) -> None:
    r = await client.get(f"/dicom-web/studies/{B}/series", headers=auth(idp))
    assert r.status_code == 403


@pytest.mark.anyio
@pytest.mark.control("AP-1")
@pytest.mark.parametrize(
    "path",
    [
        f"/dicom-web/studies/{B}",
        f"/dicom-web/studies/{B}/metadata",
        f"/dicom-web/studies/{B}/series/{B_SERIES}",
        f"/dicom-web/studies/{B}/series/{B_SERIES}/instances/{B_SOP}/frames/1",
        f"/dicom-web/studies/{A}/series/{B_SERIES}",
        f"/dicom-web/studies/{A}/series/{B_SERIES}/instances/{B_SOP}",
        f"/dicom-web/studies/{A}/series/{A_SERIES}/instances/{B_SOP}",
        f"/wado?requestType=WADO&studyUID={A}&seriesUID={B_SERIES}&objectUID={B_SOP}",
        f"/wado?requestType=WADO&studyUID={A}&seriesUID={A_SERIES}&objectUID={B_SOP}",
    ],
)
async def test_other_study_refused(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive, path: str
) -> None:
    r = await client.get(path, headers=auth(idp))
    assert r.status_code in (403, 404)
    # Only owner lookups (QIDO on the plugin) may have reached the archive, never a retrieval.
    assert all(
        "/metadata" not in str(q.url) and "/frames" not in str(q.url) and q.url.path != "/wado"
        for q in archive.requests
    )
    no_leak(r)


def named_uids(request: httpx.Request) -> set[str]:
    """Every UID an archive request names, in its path or any query value."""
    uids = set(request.url.path.split("/"))
    for _, value in httpx.QueryParams(request.url.query).multi_items():
        uids.update(value.split(","))
    return uids


@pytest.mark.anyio
@pytest.mark.control("AP-1")
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/dicom-web/studies/{B}"),
        ("GET", f"/dicom-web/studies/{B}/metadata"),
        ("GET", f"/dicom-web/studies/{B}/series"),
        ("GET", f"/dicom-web/studies/{B}/series/{B_SERIES}/instances"),
        ("GET", f"/dicom-web/studies/{B}/series/{B_SERIES}"),
        ("GET", f"/dicom-web/studies/{B}/series/{B_SERIES}/instances/{B_SOP}/frames/1"),
        ("GET", f"/dicom-web/studies/{B}/series/{A_SERIES}/instances/{A_SOP}"),
        ("GET", f"/dicom-web/studies/{B}/series/{B_SERIES}/instances/{B_SOP}/thumbnail"),
        ("DELETE", f"/dicom-web/studies/{B}"),
        ("DELETE", f"/dicom-web/studies/{B}/series/{B_SERIES}"),
    ],
)
async def test_refused_study_is_never_named_to_the_archive(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive, method: str, path: str
) -> None:
    """The decision on the named study comes from the policy store alone: the archive is not
    asked about B, its series or its instances (issue 5, AP-1)."""
    r = await client.request(method, path, headers=auth(idp))
    assert r.status_code == 403, r.text
    for sent in archive.requests:
        assert not named_uids(sent) & {B, B_SERIES, B_SOP}, sent.url
    no_leak(r)


@pytest.mark.anyio
@pytest.mark.control("AP-1")
@pytest.mark.parametrize(
    "query", [f"StudyInstanceUID={B}", f"0020000D={B}", f"StudyInstanceUID={B},{B}"]
)
async def test_qido_for_refused_study_asks_the_archive_nothing(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive, query: str
) -> None:
    for level in ("studies", "series", "instances"):
        r = await client.get(f"/dicom-web/{level}?{query}", headers=auth(idp))
        assert r.status_code == 200 and r.json() == [], r.text
    assert archive.requests == []


@pytest.mark.anyio
@pytest.mark.control("AP-1")
async def test_qido_uid_list_cut_to_permitted_before_forwarding(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive
) -> None:
    r = await client.get(f"/dicom-web/studies?StudyInstanceUID={B},{A}", headers=auth(idp))
    assert r.status_code == 200
    assert [item["0020000D"]["Value"][0] for item in r.json()] == [A]
    (sent,) = archive.requests
    assert httpx.QueryParams(sent.url.query)["StudyInstanceUID"] == A
    assert B not in named_uids(sent)


@pytest.mark.anyio
@pytest.mark.control("AP-1")
async def test_hierarchy_checked_after_the_named_study_is_allowed(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive
) -> None:
    """`/studies/A/series/<series of B>`: A is allowed, so the series' owner is looked up (by the
    series UID, never by B) and the mismatch is 404; nothing is retrieved."""
    r = await client.get(f"/dicom-web/studies/{A}/series/{B_SERIES}/metadata", headers=auth(idp))
    assert r.status_code == 404
    assert [q.url.path for q in archive.requests] == ["/dicom-web/series"]
    assert B not in named_uids(archive.requests[0])
    no_leak(r)


@pytest.mark.anyio
@pytest.mark.control("AP-5")
async def test_retrieve_zeroes_preamble(client: httpx.AsyncClient, idp: FakeIdp) -> None:
    r = await client.get(f"/dicom-web/studies/{A}", headers=auth(idp))
    assert r.status_code == 200
    body = r.content
    at = body.index(b"DICM")
    assert body[at - 128 : at] == bytes(128)
    no_leak(r)


@pytest.mark.anyio
async def test_metadata_urls_rewritten(client: httpx.AsyncClient, idp: FakeIdp) -> None:
    r = await client.get(f"/dicom-web/studies/{A}/metadata", headers=auth(idp))
    assert r.status_code == 200
    assert ARCHIVE_URL not in r.text and PUBLIC_URL in r.text


@pytest.mark.anyio
@pytest.mark.control("ID-1")
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Basic Z2F0ZXdheTp4"},
        {"Authorization": "Bearer " + "a" * 10000},
    ],
)
async def test_unauthenticated_reaches_nothing(
    client: httpx.AsyncClient,
    archive: FakeArchive,
    auditor: RecordingAuditor,
    headers: dict[str, str],
) -> None:
    r = await client.get(f"/dicom-web/studies/{A}", headers=headers)
    assert r.status_code == 401
    assert "WWW-Authenticate" in r.headers
    assert archive.requests == []
    assert auditor.records and auditor.records[-1].status == 401


@pytest.mark.anyio
@pytest.mark.control("AP-2")
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/tools/find", 404),
        ("POST", "/tools/find", 404),
        ("GET", "/instances", 404),
        ("GET", "/system", 404),
        ("GET", "/plugins/dicom-web", 404),
        ("GET", "/patients", 404),
        ("GET", "/dicom-web/tools/find", 404),
        ("GET", "/dicom-web/system", 404),
        ("PUT", "/dicom-web/studies", 405),
        ("PATCH", f"/dicom-web/studies/{A}", 405),
        ("GET", "/dicom-web/studies?Patient%49D=ZT-P001", 400),
        ("GET", "/dicom-web/studies?Foo=1", 400),
    ],
)
async def test_route_allow_list(
    auditor: RecordingAuditor,
    client: httpx.AsyncClient,
    idp: FakeIdp,
    archive: FakeArchive,
    method: str,
    path: str,
    status: int,
) -> None:
    before = len(auditor.records)
    r = await client.request(method, path, headers=auth(idp))
    assert r.status_code == status
    assert archive.requests == []
    assert len(auditor.records) == before + 1  # refusals are audited too
    if status == 405:
        assert "allow" in r.headers


@pytest.mark.anyio
@pytest.mark.control("AP-5")
async def test_stow_preamble_rejected(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive, auditor: RecordingAuditor
) -> None:
    ctype, body = multipart([dicom_file(study=A, preamble=PE_PREAMBLE)])
    r = await client.post(
        "/dicom-web/studies", headers=auth(idp) | {"Content-Type": ctype}, content=body
    )
    assert r.status_code == 409
    failed = r.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0xC000]
    assert archive.requests == []
    assert auditor.records[-1].alerts and auditor.records[-1].alerts[0][0] == "preamble"


@pytest.mark.anyio
@pytest.mark.parametrize("settings_overrides", [{"limits": {"preamble_policy": "zero"}}])
async def test_stow_preamble_zeroed(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive
) -> None:
    good = dicom_file(study=A)
    ctype, body = multipart([dicom_file(study=A, preamble=b"#!/bin/sh\n"), good])
    r = await client.post(
        f"/dicom-web/studies/{A}", headers=auth(idp) | {"Content-Type": ctype}, content=body
    )
    assert r.status_code == 200
    sent = archive.requests[-1].content
    assert b"#!/bin/sh" not in sent and good[128:] in sent


@pytest.mark.anyio
async def test_stow_study_mismatch_and_partial(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive
) -> None:
    ctype, body = multipart([dicom_file(study=A), dicom_file(study=B), b"not dicom"])
    r = await client.post(
        f"/dicom-web/studies/{A}", headers=auth(idp) | {"Content-Type": ctype}, content=body
    )
    assert r.status_code == 202
    reasons = [i["00081197"]["Value"][0] for i in r.json()["00081198"]["Value"]]
    assert sorted(reasons) == sorted([0xA900, 0xC000])
    assert archive.requests[-1].content.count(b"DICM") == 1


@pytest.mark.anyio
@pytest.mark.control("AP-1")
async def test_stow_into_other_study_refused(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive
) -> None:
    ctype, body = multipart([dicom_file(study=B)])
    for path in ("/dicom-web/studies", f"/dicom-web/studies/{B}"):
        r = await client.post(path, headers=auth(idp) | {"Content-Type": ctype}, content=body)
        assert r.status_code == 403
    assert archive.requests == []


@pytest.mark.anyio
@pytest.mark.control("AP-3")
async def test_stow_limits(client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive) -> None:
    ctype, body = multipart([dicom_file(study=A, pixel=bytes(1_100_000))])
    r = await client.post(
        "/dicom-web/studies", headers=auth(idp) | {"Content-Type": ctype}, content=body
    )
    assert r.status_code == 413
    small_type, small = multipart([dicom_file(study=A)])
    r = await client.post(
        "/dicom-web/studies",
        content=small,  # the size cap comes first (before authentication), so a small body
        headers=auth(idp) | {"Content-Type": small_type, "Content-Encoding": "gzip"},
    )
    assert r.status_code == 415
    r = await client.post(
        "/dicom-web/studies",
        content=b"{}",
        headers=auth(idp) | {"Content-Type": "application/json"},
    )
    assert r.status_code == 415
    assert archive.requests == []


@pytest.mark.anyio
@pytest.mark.control("AP-3")
@pytest.mark.parametrize("settings_overrides", [{"limits": {"requests_per_minute": 3}}])
async def test_rate_limit(client: httpx.AsyncClient, idp: FakeIdp) -> None:
    statuses = [
        (await client.get("/dicom-web/studies", headers=auth(idp))).status_code for _ in range(5)
    ]
    assert statuses[:3] == [200, 200, 200] and statuses[3] == 429
    r = await client.get("/dicom-web/studies", headers=auth(idp))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


@pytest.mark.anyio
@pytest.mark.control("AO-2")
async def test_archive_down_and_slow(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive
) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    archive.handler_override = down
    r = await client.get("/dicom-web/studies", headers=auth(idp))
    assert r.status_code == 503 and "retry-after" in r.headers
    no_leak(r)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    archive.handler_override = slow
    r = await client.get("/dicom-web/studies", headers=auth(idp))
    assert r.status_code == 504
    no_leak(r)


@pytest.mark.anyio
@pytest.mark.control("AO-2")
async def test_audit_down_forwards_nothing(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive, auditor: RecordingAuditor
) -> None:
    auditor.down = True
    r = await client.get("/dicom-web/studies", headers=auth(idp))
    assert r.status_code == 503
    assert archive.requests == []


@pytest.mark.anyio
@pytest.mark.control("AP-6")
async def test_archive_errors_are_generic(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive
) -> None:
    archive.handler_override = lambda request: (
        httpx.Response(
            500,
            text="Orthanc 1.10.1 internal error at /var/lib/orthanc",
            headers={"Server": "Orthanc"},
        )
        if request.url.path.endswith("/metadata")
        else None
    )
    r = await client.get(f"/dicom-web/studies/{A}/metadata", headers=auth(idp))
    assert r.status_code == 502
    assert r.json()["error"] == "archive_error"
    no_leak(r)


@pytest.mark.anyio
@pytest.mark.control("NW-2")
async def test_security_headers(client: httpx.AsyncClient, idp: FakeIdp) -> None:
    for r in (
        await client.get("/dicom-web/studies", headers=auth(idp)),
        await client.get("/dicom-web/studies"),
    ):
        assert "max-age=63072000" in r.headers["strict-transport-security"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"


@pytest.mark.anyio
@pytest.mark.control("GV-1")
async def test_protected_resource_metadata(client: httpx.AsyncClient) -> None:
    r = await client.get("/.well-known/oauth-protected-resource")
    meta = r.json()
    assert meta["resource"] == PUBLIC_URL
    assert meta["authorization_servers"] and meta["bearer_methods_supported"] == ["header"]
    assert "ES256" in meta["dpop_signing_alg_values_supported"]
    assert "user/ImagingStudy.rs" in meta["scopes_supported"]


@pytest.mark.anyio
async def test_delete_addresses_the_authorized_resource(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive, kind: str
) -> None:
    """Orthanc: its REST API, the resource found under the authorized study; the standard
    adapter: the authorized path itself, nothing looked up, and 501 where deleting is not
    offered."""
    r = await client.delete(f"/dicom-web/studies/{A}/series/{A_SERIES}", headers=auth(idp))
    assert r.status_code == 204
    assert archive.requests[-1].method == "DELETE"
    if kind == "orthanc":
        assert archive.requests[-1].url.path == f"/series/se|{A}|{A_SERIES}"
        r = await client.delete(f"/dicom-web/studies/{B}", headers=auth(idp))
        assert r.status_code in (403, 404)
        return
    assert archive.requests[-1].url.path == f"/dicom-web/studies/{A}/series/{A_SERIES}"

    def unsupported(request: httpx.Request) -> httpx.Response | None:
        return httpx.Response(405) if request.method == "DELETE" else None

    archive.handler_override = unsupported
    r = await client.delete(f"/dicom-web/studies/{A}", headers=auth(idp))
    assert r.status_code == 501 and r.json()["error"] == "delete_unsupported"
    no_leak(r)


@pytest.mark.anyio
async def test_client_headers_not_forwarded(
    client: httpx.AsyncClient, idp: FakeIdp, archive: FakeArchive, kind: str
) -> None:
    await client.get(
        "/dicom-web/studies",
        headers=auth(idp)
        | {"X-Forwarded-Host": "evil.test", "Forwarded": "host=evil.test", "Cookie": "a=b"},
    )
    sent = archive.requests[-1].headers
    if kind == "orthanc":
        assert sent["forwarded"] == "host=gateway.test:8443;proto=https"
    else:  # the standard adapter's URLs are rewritten from its own root (url_map)
        assert "forwarded" not in sent
    assert "x-forwarded-host" not in sent and "cookie" not in sent
    assert sent["authorization"].startswith("Basic ")


@pytest.mark.anyio
async def test_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert (await client.get("/metrics")).status_code == 200


@pytest.mark.anyio
@pytest.mark.control("AO-2")
async def test_unrecordable_answer_withheld(
    client: httpx.AsyncClient, idp: FakeIdp, auditor: RecordingAuditor
) -> None:
    auditor.fail_record = True
    r = await client.get(f"/dicom-web/studies/{A}", headers=auth(idp))
    assert r.status_code == 503
    assert b"DICM" not in r.content
