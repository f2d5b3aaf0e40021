"""De-identified views in the gateway (DA-1): the hooks the DICOMweb routes call.

A policy rule with `view: deidentified` (docs/policy.md) makes the decision on a study carry
`deidentified_project`. Then, on every path:

1. `resolve()` (before anything is decided) replaces the pseudonymous UIDs of the path, the
   WADO-URI query and the QIDO UID keys with the real ones through the reverse map; a path that
   mixes pseudonymous and real UIDs is 404. Pseudonyms are never forwarded to the archive.
2. `enforce()` (right after the decision on the named study) requires the view and the UIDs to
   agree: pseudonyms only under a de-identified grant of their project, real UIDs only under an
   identified one. Anything else is 404, so a de-identified-only caller cannot use a real UID
   (the pseudonymization would be pointless) and nobody else can use a pseudonym.
3. `retrieve()` answers every read itself, with the profile applied (`profile.py`); the data
   plane declines such requests (`declines()`), so no byte comes straight from the archive.
   Instances that may carry burned-in text are refused (403 `burned_in_annotation`).
4. `filter_search()` de-identifies QIDO results of de-identified studies, and leaves them out
   when the query matched on anything but pseudonymous UIDs and modality (no identity oracle).

The audit record of such a request notes the de-identification (`AUDIT_KEY`).
"""

from __future__ import annotations

import io
import json
import re
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pydicom
from starlette.requests import Request
from starlette.responses import Response

from ..context import Action, Decision, RequestContext
from ..errors import GatewayError, not_found, service_unavailable
from ..parse import METADATA, RENDERED, SEARCHES, THUMBNAILS, QidoQuery, Resource, Transaction
from ..services import services_of
from .profile import Profile, burned_in_reason
from .pseudonyms import Pseudonymizer
from .store import PseudonymStore

PSEUDONYMS_KEY = "deid_pseudonyms"  # ctx.extra: the project whose pseudonyms the request used
RAW_UIDS_KEY = "deid_raw_uid_keys"  # ctx.extra: QIDO UID keys with real values
AUDIT_KEY = "deidentified"  # ctx.extra: {"project", "profile", "studies"} for the audit record
UID_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# QIDO keys a de-identified result may be matched on: anything else (names, IDs, dates,
# accession numbers, descriptions) would let a caller test identities against pseudonyms.
DEID_MATCH_KEYS = frozenset({*UID_KEYS, "Modality", "ModalitiesInStudy"})
PIXEL_BULK = frozenset({"7FE00010", "7FE00008", "7FE00009"})
DICOM_JSON = "application/dicom+json"


@dataclass
class Grant:
    project: str
    allow_secondary_capture: bool


class DeidService:
    """Per application: the master key and the reverse map (lives on `Services.deid`)."""

    def __init__(self, key: bytes | None, store: PseudonymStore | None) -> None:
        self.key = key
        self.store = store

    async def record(self, project: str, pairs: dict[str, str]) -> None:
        if self.store is None:
            raise service_unavailable("no store for the pseudonyms' reverse map")
        await self.store.record(project, pairs)

    def pseudonymizer(self, project: str) -> Pseudonymizer:
        if self.key is None:
            raise service_unavailable("deidentification.key_file is not configured")
        return Pseudonymizer.for_project(self.key, project)


def service(request: Request) -> DeidService:
    services = services_of(request)
    svc: DeidService | None = services.deid
    if svc is None:
        section = getattr(services.settings, "deidentification", None)
        key = Path(section.key_file).read_bytes().strip() if section is not None else None
        policy_store = getattr(services.authorizer, "store", None)  # None: a test's fake
        engine = getattr(policy_store, "engine", None)
        svc = DeidService(key, PseudonymStore(engine) if engine is not None else None)
        services.deid = svc
    return svc


def _policy_has_views(request: Request) -> bool:
    policy = getattr(services_of(request).authorizer, "policy", None)
    return policy is not None and any(r.view == "deidentified" for r in policy.rules)


# ------------------------------------------------------------------------------ 1. resolve


async def resolve(request: Request, ctx: RequestContext, resource: Resource) -> Resource:
    """The resource with pseudonymous UIDs replaced by the real ones (see module doc)."""
    path = [resource.study_instance_uid, resource.series_instance_uid, resource.sop_instance_uid]
    query = resource.query
    values = [v for k in UID_KEYS for v in (query.values(k) if query else [])]
    named = [u for u in path if u] + values
    if not any(u.startswith("2.25.") for u in named):
        return resource
    store = service(request).store
    found = await store.resolve(named) if store is not None else {}
    if not found:
        return resource
    projects = {project for project, _ in found.values()}
    if len(projects) != 1:
        raise not_found("pseudonyms of several projects")
    if resource.transaction not in SEARCHES and resource.action is not Action.READ:
        raise not_found("pseudonymous UIDs are read-only")
    if any(u and u not in found for u in path):
        raise not_found("pseudonymous and real UIDs mixed in one path")
    ctx.extra[PSEUDONYMS_KEY] = projects.pop()

    def real(uid: str | None) -> str | None:
        return found[uid][1] if uid else uid

    if query is not None:
        matches = []
        for key, value in query.matches:
            if key in UID_KEYS:
                uids = [found[v][1] if v in found else v for v in value.split(",")]
                if any(v not in found for v in value.split(",") if v):
                    ctx.extra[RAW_UIDS_KEY] = True
                value = ",".join(uids)
            matches.append((key, value))
        query = replace(query, matches=tuple(matches))
    return replace(
        resource,
        study_instance_uid=real(resource.study_instance_uid),
        series_instance_uid=real(resource.series_instance_uid),
        sop_instance_uid=real(resource.sop_instance_uid),
        query=query,
    )


# ------------------------------------------------------------------------------ 2. enforce


def grant_of(decision: Decision | None) -> Grant | None:
    if decision is None or not decision.allow or decision.deidentified_project is None:
        return None
    return Grant(decision.deidentified_project, decision.allow_secondary_capture)


def enforce(ctx: RequestContext) -> None:
    """After the decision on the named study: the view and the UIDs the caller used agree."""
    grant = grant_of(ctx.decisions[-1] if ctx.decisions else None)
    used = ctx.extra.get(PSEUDONYMS_KEY)
    if grant is None and used is None:
        return
    if grant is None:
        raise not_found("a pseudonymous UID outside a de-identified grant")
    if used != grant.project:
        raise not_found(f"a real UID under the de-identified grant of {grant.project}")
    ctx.extra[AUDIT_KEY] = {"project": grant.project}


def grant_in(ctx: RequestContext) -> Grant | None:
    """The de-identified grant the request was decided under, if any."""
    if AUDIT_KEY not in ctx.extra:
        return None
    return next((g for g in map(grant_of, reversed(ctx.decisions)) if g is not None), None)


def declines(ctx: RequestContext) -> bool:
    """The data plane must not stream this (the gateway transforms it)."""
    return AUDIT_KEY in ctx.extra or any(grant_of(d) for d in ctx.decisions)


# ------------------------------------------------------------------------------ 4. QIDO


async def filter_search(
    request: Request, ctx: RequestContext, resource: Resource, page: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    used = ctx.extra.get(PSEUDONYMS_KEY)
    if used is None and not _policy_has_views(request):
        return page
    authorizer = services_of(request).authorizer
    study_of = {id(item): _first(item, "0020000D") or resource.study_instance_uid for item in page}
    uids = {u for u in study_of.values() if u}
    # One read for the whole page (a worklist page is 101 studies), not one per study.
    decisions = await authorizer.decide_studies(ctx, Action.SEARCH, uids)
    patients = await authorizer.study_patients(uids)
    query = resource.query or QidoQuery()
    identifying = [k for k, _ in query.matches if k not in DEID_MATCH_KEYS]
    raw_uids = ctx.extra.get(RAW_UIDS_KEY) or (
        used is None and any(k in UID_KEYS for k, _ in query.matches)
    )
    svc = service(request) if any(grant_of(d) for d in decisions.values()) else None
    out: list[dict[str, Any]] = []
    issued: dict[str, dict[str, str]] = {}
    for item in page:
        uid = study_of[id(item)]
        grant = grant_of(decisions.get(uid or ""))
        if grant is None:
            if used is None:
                out.append(item)
            continue
        if identifying or raw_uids or used not in (None, grant.project) or svc is None:
            continue
        if burned_in_reason(
            _first(item, "00080016"), _first(item, "00280301"), grant.allow_secondary_capture
        ):
            continue
        pseudo = svc.pseudonymizer(grant.project)
        profile = Profile(pseudo, patients.get(uid or "") or "")
        out.append(profile.json(item, url=url_mapper(pseudo)))
        issued.setdefault(grant.project, {}).update(pseudo.issued)
        ctx.extra[AUDIT_KEY] = {"project": grant.project}
    if svc is not None:
        for project, pairs in issued.items():
            await svc.record(project, pairs)
    return out


# ------------------------------------------------------------------------------ 3. retrieve

_UID_SEGMENT = re.compile(r"(/(?:studies|series|instances)/)([0-9.]+)")


def url_mapper(pseudo: Pseudonymizer) -> Any:
    """Public DICOMweb URLs with every UID of their path replaced by its pseudonym."""

    def mapped(url: str) -> str:
        return _UID_SEGMENT.sub(lambda m: m.group(1) + pseudo.uid(m.group(2)), url)

    return mapped


def refused(reason: str) -> GatewayError:
    return GatewayError(
        403,
        "burned_in_annotation",
        "this instance may carry burned-in identifying text and is not served de-identified",
        reason,
    )


_METADATA_OF = {
    "study": Transaction.RETRIEVE_STUDY_METADATA,
    "series": Transaction.RETRIEVE_SERIES_METADATA,
    "instance": Transaction.RETRIEVE_INSTANCE_METADATA,
}
_PART10 = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_OCTETS = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def _level(resource: Resource) -> str:
    if resource.sop_instance_uid:
        return "instance"
    return "series" if resource.series_instance_uid else "study"


async def retrieve(request: Request, ctx: RequestContext, resource: Resource) -> Response:
    """Answer a read under a de-identified grant: nothing leaves untransformed."""
    from ..dicomweb import rendered_accept  # the route module imports this one

    grant = grant_in(ctx)
    assert grant is not None
    services = services_of(request)
    archive = services.archive
    svc = service(request)
    pseudo = svc.pseudonymizer(grant.project)
    study = resource.study_instance_uid or ""
    patient = (await services.authorizer.study_patients([study])).get(study) or ""
    profile = Profile(pseudo, patient)
    t = resource.transaction
    if t is Transaction.RETRIEVE_WADO_URI:
        args = dict(parse_qsl(resource.raw_query))
        wants_dicom = args.get("contentType", "image/jpeg").startswith("application/dicom")
        t = Transaction.RETRIEVE_INSTANCE if wants_dicom else Transaction.RETRIEVE_RENDERED_INSTANCE
        resource = replace(resource, transaction=t, raw_query="")
    ctx.forwarded = True
    # Which instances are addressed, and may any of them carry burned-in text?
    scope = Resource(
        _METADATA_OF[_level(resource)],
        resource.study_instance_uid,
        resource.series_instance_uid,
        resource.sop_instance_uid,
    )
    metadata = json.loads(await _read(archive, scope, DICOM_JSON) or b"[]")
    metadata = [item for item in metadata if isinstance(item, dict)]
    flagged = {
        _first(item, "00080018") or "": reason
        for item in metadata
        if (
            reason := burned_in_reason(
                _first(item, "00080016"), _first(item, "00280301"), grant.allow_secondary_capture
            )
        )
    }
    single = resource.sop_instance_uid is not None or t in RENDERED or t in THUMBNAILS
    if flagged and single:
        raise refused("; ".join(sorted(set(flagged.values()))))
    if t in METADATA:
        rewrite = services.rewriter.rewrite
        items = [item for item in metadata if (_first(item, "00080018") or "") not in flagged]
        body = [
            profile.mark_json(profile.json(_rewritten(item, rewrite), url=url_mapper(pseudo)))
            for item in items
        ]
        await svc.record(grant.project, pseudo.issued)
        return Response(json.dumps(body).encode(), media_type=DICOM_JSON)
    if t in (
        Transaction.RETRIEVE_STUDY,
        Transaction.RETRIEVE_SERIES,
        Transaction.RETRIEVE_INSTANCE,
    ):
        answer = await _answer(archive, replace(resource, raw_query=""), _PART10)
        parts = []
        for _, payload in _parts(answer):
            ds = pydicom.dcmread(io.BytesIO(payload))
            if str(ds.get("SOPInstanceUID", "")) in flagged:
                continue
            profile.dataset(ds)
            out = io.BytesIO()
            ds.preamble = b"\0" * 128
            ds.save_as(out, enforce_file_format=True)
            parts.append(("application/dicom", out.getvalue()))
        await svc.record(grant.project, pseudo.issued)
        if request.url.path.startswith("/wado"):
            return Response(parts[0][1] if parts else b"", media_type="application/dicom")
        return _multipart(parts, "application/dicom")
    if t is Transaction.RETRIEVE_BULKDATA and (resource.bulk_path or "") not in PIXEL_BULK:
        raise not_found("only pixel data is offered as bulk data in a de-identified view")
    if t in (Transaction.RETRIEVE_FRAMES, Transaction.RETRIEVE_BULKDATA):
        # Pixel data as the archive stores it; each part rebuilt with its media type only
        # (no Content-Location naming real UIDs).
        answer = await _answer(archive, resource, _OCTETS)
        return _multipart(_parts(answer), "application/octet-stream")
    # Rendered images and thumbnails: pixels only (the archive renders no annotations).
    accept = rendered_accept(request.headers.get("accept"))
    image, _ = await _answer(archive, resource, accept)
    return Response(image, media_type=accept)


async def _answer(archive: Any, resource: Resource, accept: str) -> tuple[bytes, str]:
    upstream = await archive.retrieve(resource, {"accept": accept})
    try:
        body = await upstream.aread()
    finally:
        await upstream.aclose()
    if upstream.status_code >= 400:
        raise not_found(f"archive {upstream.status_code} for {resource.transaction.value}")
    return body, upstream.headers.get("content-type", "")


async def _read(archive: Any, resource: Resource, accept: str) -> bytes:
    body, _ = await _answer(archive, resource, accept)
    return body


def _rewritten(item: dict[str, Any], rewrite: Any) -> dict[str, Any]:
    """Archive URLs in one metadata item made public (AP-4) before they are pseudonymized."""
    body: bytes = rewrite(json.dumps(item).encode())
    out: dict[str, Any] = json.loads(body)
    return out


def _parts(upstream: tuple[bytes, str]) -> list[tuple[str, bytes]]:
    body, content_type = upstream
    boundary = ""
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        return []
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk.partition(b"\r\n\r\n")
        media = "application/octet-stream"
        for line in head.split(b"\r\n"):
            field, _, raw = line.partition(b":")
            if field.strip().lower() == b"content-type":
                media = raw.strip().decode("ascii", "replace")
        parts.append((media, payload[:-2] if payload.endswith(b"\r\n") else payload))
    return parts


def _multipart(parts: list[tuple[str, bytes]], kind: str) -> Response:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode() + payload + b"\r\n"
        for media, payload in parts
    )
    body += f"--{boundary}--\r\n".encode()
    return Response(body, media_type=f'multipart/related; type="{kind}"; boundary={boundary}')


def _first(item: dict[str, Any], tag: str) -> str | None:
    element = item.get(tag)
    if isinstance(element, dict):
        values = element.get("Value")
        if isinstance(values, list) and values and isinstance(values[0], str):
            return values[0]
    return None
