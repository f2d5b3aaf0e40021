"""The DICOMweb routes (PS3.18): parse -> authenticate -> resolve owner -> authorize -> forward.

One handler per kind of transaction. Authorization is always decided on the study that really
owns the addressed object, as the archive reports it, never on a UID a client wrote (AP-1).
Nothing reaches the archive before authentication and the audit preflight; no object is
forwarded before authorization.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from . import dicomjson
from .context import Action, RequestContext, StudyRef
from .deid import views as deid_views
from .errors import GatewayError, bad_request, not_found
from .forward import archive_error, request_headers, stream_response
from .nativexml import DICOM_XML, multipart_xml, native_xml, rewrite_multipart
from .parse import (
    DICOMWEB_PREFIX,
    METADATA,
    RENDERED,
    SEARCHES,
    THUMBNAILS,
    WADO_URI_PATH,
    Resource,
    Transaction,
    parse_dicomweb,
    parse_wado_uri,
)
from .pipeline import Spec, StudyFrom, run
from .rewrite import dump_json, filter_qido
from .search import count_matches, search_index
from .services import services_of
from .storage import store_parts
from .store import Claim
from .stow import (
    parse_stow,
    payload_too_large,
    store_status,
    unsupported_media_type,
)

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
DICOMWEB_ROOT = DICOMWEB_PREFIX  # the gateway's own roots (http.API_PREFIXES)
WADO_URI_ROOT = WADO_URI_PATH


def install(app: FastAPI) -> None:
    """Plain Starlette routes: the hot path skips FastAPI's dependency machinery."""
    app.add_route(DICOMWEB_ROOT + "/{path:path}", dicomweb, methods=_METHODS)
    app.add_route(WADO_URI_ROOT, wado_uri, methods=_METHODS)


DICOM_JSON = "application/dicom+json"


async def dicomweb(request: Request) -> Response:
    path: str = request.path_params["path"]

    async def parse(request: Request) -> tuple[Spec[Resource], Resource]:
        settings = services_of(request).settings
        resource = parse_dicomweb(
            request.method, path, request.url.query, settings.limits.qido_max_limit
        )
        return spec_of(resource), resource

    return await run(request, parse)


async def wado_uri(request: Request) -> Response:
    async def parse(request: Request) -> tuple[Spec[Resource], Resource]:
        resource = parse_wado_uri(request.method, request.url.query)
        return spec_of(resource), resource

    return await run(
        request, parse, transaction=Transaction.RETRIEVE_WADO_URI.value, action=Action.READ
    )


async def _path_owner(request: Request, ctx: RequestContext, resource: Resource) -> StudyRef:
    assert ctx.action is not None
    return await owning_study(request, ctx, resource, ctx.action)


async def _pseudonyms(request: Request, ctx: RequestContext, resource: Resource) -> Resource:
    return await deid_views.resolve(request, ctx, resource)  # DA-1: pseudonymous UIDs


def spec_of(resource: Resource) -> Spec[Resource]:
    """Each DICOMweb transaction's spec: its action, where its study comes from, its handler.
    Every one resolves pseudonymous UIDs first (DA-1)."""
    t = resource.transaction
    named = resource.study_instance_uid is not None
    if t in SEARCHES:
        study, action, forward = (
            (StudyFrom.PATH if named else StudyFrom.INDEX),
            Action.SEARCH,
            search,
        )
    elif t is Transaction.STORE_INSTANCES:
        study, action, forward = StudyFrom.BODY, Action.STORE, store
    elif t in (Transaction.DELETE_STUDY, Transaction.DELETE_SERIES):
        study, action, forward = StudyFrom.PATH, Action.DELETE, delete
    else:
        study, action, forward = StudyFrom.PATH, Action.READ, retrieve
    return Spec(
        t.value,
        action,
        study,
        forward,
        owner=_path_owner if study is StudyFrom.PATH else None,
        resolve=_pseudonyms,
    )


# ---------------------------------------------------------------- owner resolution


async def owning_study(
    request: Request, ctx: RequestContext, resource: Resource, action: Action
) -> StudyRef:
    """Authorize on the study the path names, then prove the archive's hierarchy agrees.

    The decision on the named study reads only the policy store: the archive is not asked
    anything about a study the caller may not see (AP-1, "the archive is not asked for it").
    Only then are the owners of the addressed series/instance looked up; a mismatch
    (`/studies/A/series/<series of B>`) is 404, as is a missing object, so existence is never
    disclosed for a study the caller was refused.
    """
    authorizer = services_of(request).authorizer
    named = resource.study_instance_uid
    assert named is not None
    try:
        await authorizer.check_study(ctx, action, named)
    except GatewayError:
        # The refusal's audit message names the study; its patient is not asked of the archive.
        ctx.add_study(StudyRef(named))
        raise
    deid_views.enforce(ctx)  # DA-1: real UIDs never under a de-identified grant, nor pseudonyms
    patient = (await authorizer.study_patients([named])).get(named)
    level, uid = "study", named
    if resource.sop_instance_uid:
        level, uid = "instance", resource.sop_instance_uid
    elif resource.series_instance_uid:
        level, uid = "series", resource.series_instance_uid
    if level != "study":
        places = await locate(request, level, uid)
        found = any(study == named for study, _ in places)
        series = resource.series_instance_uid
        if found and level == "instance" and series:
            # The instance's series must be the path's, and belong to the same study.
            found = any(study == named and s in (None, series) for study, s in places)
            if found and (named, series) not in places:
                found = named in await owners_of(request, "series", series)
        if not found:
            ctx.add_study(StudyRef(named, patient))
            raise not_found(f"{level} {uid} not in study {named}")
    owner = StudyRef(named, patient)
    ctx.add_study(owner)
    return owner


async def locate(request: Request, level: str, uid: str) -> set[tuple[str, str | None]]:
    """(study, series) pairs that hold a series or instance UID: one indexed look-up; the
    archive only on an index miss, and what it answers is recorded (the miss repaired)."""
    services = services_of(request)
    authorizer = services.authorizer
    claim = await authorizer.owner(level, uid)
    if claim is not None:
        series = claim.series_instance_uid if level == "instance" else None
        return {(claim.study_instance_uid, series)}
    found = (await services.archive.locate(level, [uid])).get(uid, set())
    places = {
        (loc.study_instance_uid, loc.series_instance_uid if level == "instance" else None)
        for loc in found
    }
    if len(places) == 1:
        ((study, series),) = places
        await authorizer.record_locations([Claim(level, uid, study, series)])
    return places


async def owners_of(request: Request, level: str, uid: str) -> set[str]:
    return {study for study, _ in await locate(request, level, uid)}


# ---------------------------------------------------------------- QIDO-RS


async def search(request: Request, ctx: RequestContext, resource: Resource) -> Response:
    state = services_of(request)
    archive = state.archive
    authorizer = state.authorizer
    media = qido_media(request.headers.get("accept"))
    query = resource.query
    assert query is not None and query.limit is not None
    # One more than the page when the gateway's cap set the limit: was the answer cut?
    probe = replace(query, limit=query.limit + 1) if query.capped else query
    total: int | None = None
    page: list[dict[str, Any]]
    if not resource.study_instance_uid:
        # Decided and paged by the study index; the archive sees only the permitted page.
        async def resolve(level: str, uid: str) -> set[str]:
            return await owners_of(request, level, uid)

        page = await search_index(
            archive, authorizer, ctx, resource.transaction, probe, resolve, state.answers
        )
        if len(page) > query.limit:
            total = await count_matches(authorizer, ctx, resource.transaction, query)
    else:
        # Within one permitted study: decided by the pipeline (the path's owner), and a series
        # the path names must be one of that study's (else 404, the same for an unknown series
        # and a series of another study: a series UID's existence is never disclosed, AP-1;
        # docs/conformance.md).
        ctx.forwarded = True
        results = await archive.search(
            resource.archive_path(), query, ("StudyInstanceUID", "PatientID")
        )

        async def permitted(uids: set[str]) -> set[str]:
            allowed: set[str] = await authorizer.permitted_studies(ctx, Action.SEARCH, uids)
            return allowed

        page, total = await filter_qido(results, probe, permitted, drop_study_uid=False)
    headers: dict[str, str] = {}
    if len(page) > query.limit:
        # Never cut silently (PS3.18 6.7.1.2): the count is over permitted matches only.
        page = page[: query.limit]
        headers["Warning"] = truncation_warning(state.settings.public_url, total)
    for item in page:
        study = dicomjson.first(item, "0020000D")
        if study:
            ctx.add_study(StudyRef(study, dicomjson.first(item, "00100020")))
    page = await deid_views.filter_search(request, ctx, resource, page)  # DA-1
    # Empty results are 200 with an empty list (or no part), never 204 (docs/conformance.md).
    if media == DICOM_XML:
        body, content_type = multipart_xml(json.loads(state.rewriter.rewrite(dump_json(page))))
        return Response(body, status_code=200, media_type=content_type, headers=headers)
    body = state.rewriter.rewrite(dump_json(page))
    return Response(body, status_code=200, media_type=DICOM_JSON, headers=headers)


TRUNCATED = (
    "The number of results exceeded the maximum supported by the server. "
    "Additional results can be requested."
)


def truncation_warning(public_url: str, total: int | None) -> str:
    """PS3.18 6.7.1.2: `299 {+SERVICE}: "<text>"`, with the number of matches when known."""
    text = TRUNCATED if total is None else f"{TRUNCATED} {total} results match."
    return f'299 {public_url.rstrip("/")}{DICOMWEB_ROOT}: "{text}"'


_JSON_MEDIA = frozenset({"application/dicom+json", "application/json", "*/*", "application/*"})


def qido_media(accept: str | None) -> str:
    """The QIDO-RS answer's media type: DICOM JSON (default) or PS3.19 XML, one part per
    result, in the order the client lists them; anything else is 406."""
    if not accept:
        return DICOM_JSON
    for item in accept.split(","):
        media, params = _media_params(item)
        if params.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        if media in _JSON_MEDIA:
            return DICOM_JSON
        if media == DICOM_XML:
            return DICOM_XML
        if media == "multipart/related" and params.get("type", DICOM_XML).lower() == DICOM_XML:
            return DICOM_XML
    raise GatewayError(
        406,
        "not_acceptable",
        "offered: application/dicom+json, multipart/related; type=application/dicom+xml",
        accept[:200],
    )


def _media_params(item: str) -> tuple[str, dict[str, str]]:
    parts = item.split(";")
    params = {}
    for part in parts[1:]:
        name, _, value = part.strip().partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return parts[0].strip().lower(), params


# ---------------------------------------------------------------- WADO-RS and WADO-URI


async def retrieve(request: Request, ctx: RequestContext, resource: Resource) -> Response:
    state = services_of(request)
    archive = state.archive
    if deid_views.grant_in(ctx) is not None:  # DA-1: the gateway transforms every byte
        return await deid_views.retrieve(request, ctx, resource)
    headers = request_headers(request.headers)
    headers.pop("content-type", None)
    if resource.transaction in THUMBNAILS or resource.transaction in RENDERED:
        headers["accept"] = rendered_accept(headers.get("accept"))
    ctx.forwarded = True
    upstream = await archive.retrieve(resource, headers)
    if upstream.status_code >= 400:
        await upstream.aclose()
        if upstream.status_code in (400, 415, 500, 501) and _asks_transfer_syntax(headers):
            # The archive cannot produce the transfer syntax asked for (PS3.18 8.7.3.5.2).
            raise GatewayError(
                406,
                "not_acceptable",
                "the requested transfer syntax is not available",
                f"archive {upstream.status_code} for {headers.get('accept')!r}",
            )
        raise archive_error(upstream.status_code, ctx.transaction or "retrieve")
    if resource.transaction in METADATA:
        # Metadata carries BulkDataURIs: rewritten, never an archive address (AP-4).
        body = await upstream.aread()
        await upstream.aclose()
        media = upstream.headers.get("content-type", DICOM_JSON)
        if media.lower().startswith("multipart/"):
            # PS3.19 XML, one part per instance: parts are rebuilt (their lengths change).
            body, media = rewrite_multipart(body, media, state.rewriter.rewrite)
        else:
            body = state.rewriter.rewrite(body)
        return Response(body, status_code=upstream.status_code, media_type=media)
    return await stream_response(upstream, head_only=request.method == "HEAD")


_RENDERED_MEDIA = ("image/jpeg", "image/png")


def rendered_accept(accept: str | None) -> str:
    """The archive renders JPEG and PNG (PS3.18 8.7.4): the first of those the client lists
    (`image/*`, `*/*` or none: JPEG); GIF, JPEG 2000, MPEG and the rest are 406."""
    if not accept:
        return "image/jpeg"
    for item in accept.split(","):
        media, params = _media_params(item)
        if params.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        if media in _RENDERED_MEDIA:
            return media
        if media in ("image/*", "*/*"):
            return "image/jpeg"
    raise GatewayError(
        406, "not_acceptable", "rendered media types offered: image/jpeg, image/png", accept[:200]
    )


def _asks_transfer_syntax(headers: dict[str, str]) -> bool:
    """Does the Accept header name a transfer syntax other than `*` (any)?"""
    for item in headers.get("accept", "").split(","):
        _, params = _media_params(item)
        syntax = params.get("transfer-syntax")
        if syntax and syntax != "*":
            return True
    return False


# ---------------------------------------------------------------- STOW-RS


async def store(request: Request, ctx: RequestContext, resource: Resource) -> Response:
    state = services_of(request)
    settings = state.settings
    archive = state.archive
    authorizer = state.authorizer
    if resource.study_instance_uid:
        await authorizer.check_study(ctx, Action.STORE, resource.study_instance_uid)
    content_type = request.headers.get("content-type", "")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # AP-3: compressed bodies would defeat the size cap (decompression bombs).
        raise unsupported_media_type(f"content-encoding {encoding!r}")
    boundary_check = content_type.lower()
    if not boundary_check.startswith("multipart/related"):
        raise unsupported_media_type(f"content type {content_type[:100]!r}")
    body = await _read_capped(request, settings.limits.stow_max_bytes)
    stow = parse_stow(
        content_type,
        body,
        resource.study_instance_uid,
        zero_preamble=settings.limits.preamble_policy == "zero",
    )
    ctx.alerts.extend(stow.alerts)
    result, denial = await store_parts(
        archive, authorizer, ctx, stow.parts, resource.archive_path()
    )
    if denial is not None:
        raise denial
    # RetrieveURLs name the gateway, whatever the archive built them from (AP-4).
    result = json.loads(state.rewriter.rewrite(json.dumps(result).encode()))
    return store_response(result, store_status(result), request.headers.get("accept"))


def store_response(result: dict[str, Any], status: int, accept: str | None) -> Response:
    """The PS3.18 10.5.3 store response: DICOM JSON, or PS3.19 XML when the client asks for
    `application/dicom+xml` before (or instead of) JSON."""
    if _stow_media(accept) == DICOM_XML:
        return Response(native_xml(result), status_code=status, media_type=DICOM_XML)
    body = json.dumps(result, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type=DICOM_JSON)


def _stow_media(accept: str | None) -> str:
    for item in (accept or "").split(","):
        media, params = _media_params(item)
        if params.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        if media == DICOM_XML:
            return DICOM_XML
        if media in _JSON_MEDIA:
            return DICOM_JSON
    return DICOM_JSON


async def _read_capped(request: Request, cap: int) -> bytes:
    """Read the body, refusing it with 413 as soon as it exceeds the cap (before forwarding)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad_request("invalid_request", "malformed request", "content-length")
        if int(declared) > cap:
            raise payload_too_large(f"content-length {declared} > {cap}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise payload_too_large(f"body exceeds {cap}")
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------- DELETE


async def delete(request: Request, ctx: RequestContext, resource: Resource) -> Response:
    state = services_of(request)
    archive = state.archive
    owner = ctx.owner
    assert owner is not None  # StudyFrom.PATH: the pipeline resolved and authorized it
    ctx.forwarded = True
    study = owner.study_instance_uid
    series = resource.series_instance_uid
    # Exactly the authorized resource: this study's series, never every series with that UID.
    if not await archive.delete(study, series, owner.patient_id):
        raise not_found(f"{series or study} vanished before delete")
    await state.authorizer.on_deleted(study, series)
    return Response(status_code=204)
