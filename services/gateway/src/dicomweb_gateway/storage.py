"""Storing instances so that the archive holds exactly what was authorized (AP-7).

One path for every way an instance enters the archive: STOW-RS (`dicomweb.store`) and the DIMSE
front door (`dimse`). Given parts already read strictly (`stow.validate_part`), in order:

1. authorize each part's study with `decide()` (once per distinct study);
2. identities (UIDs are identities): the parts of one request agree with each other; a study's
   PatientID matches what the policy store and the archive know; a Series or SOP Instance UID
   the archive already holds under another study (or series) is refused (the archive is asked
   only about UIDs the policy store has no recorded claim for); then every UID is
   claimed in the policy store in one transaction, so two concurrent stores of one UID into two
   studies cannot both pass;
3. forward a fresh multipart body with a random boundary (`stow.encode_multipart`);
4. verify: every instance the archive reports stored must sit where it was authorized (its
   RetrieveURL names study, series and instance). Anything else is deleted again, refused in the
   answer, and raises a security alert;
5. label studies that are new, once (ingest rules), and index what was stored (the study
   index), through the authorizer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import urlsplit

from . import dicomjson
from .archive import Archive, Location
from .context import Action, RequestContext, StudyRef
from .errors import GatewayError
from .forward import archive_error
from .policy import StudyFacts
from .store import Claim
from .stow import (
    IDENTITY_CONFLICT,
    PROCESSING_FAILURE,
    REFUSED_NOT_AUTHORIZED,
    Part,
    encode_multipart,
    merge_response,
)

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"


StoreArchive = Archive  # the archive port (archive/port.py)


class Identities(Protocol):
    """Where UIDs belong, as the gateway knows them (`store.PolicyStore` implements it)."""

    async def recorded(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Claim]: ...

    async def claim(self, claims: Iterable[Claim]) -> tuple[list[Claim], list[Claim]]: ...

    async def release(self, claims: Iterable[Claim]) -> None: ...


class StoreAuthorizer(Protocol):
    @property
    def store(self) -> Identities: ...

    async def check_study(self, ctx: RequestContext, action: Action, uid: str) -> None: ...

    async def study_facts(self, uids: set[str]) -> dict[str, StudyFacts]:
        """`store.studies`, from the worker's cache while the store's facts are unchanged."""
        ...

    async def on_stored(
        self, ctx: RequestContext, uids: Any, parts: Any = (), claims: Any = ()
    ) -> None: ...


async def store_parts(
    archive: StoreArchive,
    authorizer: StoreAuthorizer,
    ctx: RequestContext,
    parts: list[Part],
    archive_path: str = "/studies",
) -> tuple[dict[str, object], GatewayError | None]:
    """Store the accepted parts; returns (PS3.18 store response, a denial to raise instead).

    The denial is set when every part was refused for authorization alone: the caller then
    answers 403 like any other denied request.
    """
    verdicts = await _authorize(authorizer, ctx, parts)
    for part in parts:
        if part.study_instance_uid:
            ctx.add_study(
                StudyRef(
                    part.study_instance_uid,
                    part.patient_id,
                    (part.sop_class_uid,) if part.sop_class_uid else (),
                )
            )
    claimed = await _check_identities(archive, authorizer, ctx, _accepted(parts))
    accepted = _accepted(parts)
    refused = [p for p in parts if p.failure is not None]
    if not accepted:
        denial = next((e for e in verdicts.values() if e is not None), None)
        if denial is not None and all(p.failure == REFUSED_NOT_AUTHORIZED for p in refused):
            return {}, denial
        _explain(ctx, refused)
        return merge_response(None, refused), None
    ctx.forwarded = True
    boundary, body = encode_multipart(accepted)
    try:
        upstream = await archive.store(
            archive_path,
            'multipart/related; type="application/dicom"; boundary=' + boundary.decode(),
            body,
        )
    except GatewayError:
        await authorizer.store.release(claimed)
        raise
    if upstream.status_code >= 400 and upstream.status_code != 409:
        await authorizer.store.release(claimed)
        raise archive_error(upstream.status_code, "store_instances")
    try:
        answer = upstream.json() if upstream.content else {}
    except ValueError:
        answer = {}
    answer = answer if isinstance(answer, dict) else {}
    answer, stored = await _verify(archive, ctx, accepted, answer)
    kept = {p.sop_instance_uid for p in stored}
    await authorizer.store.release(
        c for c in claimed if c.level == "instance" and c.uid not in kept
    )
    refused = [p for p in parts if p.failure is not None and p not in stored]
    studies = sorted({p.study_instance_uid for p in stored if p.study_instance_uid})
    if studies:
        # The claims this store added for what the archive kept are the series and instances
        # new to it: the study index adds them to its counts.
        kept_series = {_uids(p)[1] for p in stored}
        added = [
            c
            for c in claimed
            if (c.level == "instance" and c.uid in kept)
            or (c.level == "series" and c.uid in kept_series)
        ]
        await authorizer.on_stored(ctx, studies, stored, added)
    _explain(ctx, refused)
    return merge_response(answer, refused), None


def _accepted(parts: list[Part]) -> list[Part]:
    return [p for p in parts if p.failure is None]


def _explain(ctx: RequestContext, refused: list[Part]) -> None:
    if refused:
        ctx.error_detail = "; ".join(p.reason for p in refused)[:1000]


def _refuse(part: Part, code: int, reason: str) -> None:
    part.failure = code
    part.reason = reason


async def _authorize(
    authorizer: StoreAuthorizer, ctx: RequestContext, parts: list[Part]
) -> dict[str, GatewayError | None]:
    """Per-study authorization: a part posted to /studies may name any study."""
    verdicts: dict[str, GatewayError | None] = {}
    for part in _accepted(parts):
        uid = part.study_instance_uid
        assert uid is not None
        if uid not in verdicts:
            try:
                await authorizer.check_study(ctx, Action.STORE, uid)
                verdicts[uid] = None
            except GatewayError as error:
                verdicts[uid] = error
        if verdicts[uid] is not None:
            _refuse(part, REFUSED_NOT_AUTHORIZED, f"not authorized for study {uid}")
    return verdicts


async def _check_identities(
    archive: StoreArchive, authorizer: StoreAuthorizer, ctx: RequestContext, parts: list[Part]
) -> list[Claim]:
    """Refuse every part whose UIDs or patient disagree with what is known; claim the rest."""
    if not parts:
        return []

    def conflict(part: Part, why: str) -> None:
        if part.failure is None:
            _refuse(part, IDENTITY_CONFLICT, f"instance {part.sop_instance_uid}: {why}")
            ctx.alerts.append(("uid-collision", f"{part.sop_instance_uid}: {why}"))

    # Within the request: one patient per study, one study per series, each instance once.
    patient_of: dict[str, str] = {}
    study_of: dict[str, str] = {}
    seen: set[str] = set()
    for p in parts:
        study, series, sop = _uids(p)
        if patient_of.setdefault(study, p.patient_id or "") != (p.patient_id or ""):
            conflict(p, f"another PatientID than other instances of study {study}")
        elif study_of.setdefault(series, study) != study:
            conflict(p, f"series {series} also named under another study in this request")
        elif sop in seen:
            conflict(p, "the same SOP Instance UID twice in one request")
        seen.add(sop)
    parts = _accepted(parts)
    # What the policy store knows of each study's patient, and where it has recorded UIDs.
    keys = {(level, uid) for p in parts for level, uid in zip(_LEVELS, _uids(p), strict=True)}
    store = authorizer.store
    facts, recorded = await asyncio.gather(
        authorizer.study_facts({_uids(p)[0] for p in parts}), store.recorded(keys)
    )
    for p in parts:
        known = facts[_uids(p)[0]]
        if known.known and known.patient_id and known.patient_id != (p.patient_id or ""):
            conflict(p, "PatientID differs from the study's")
    parts = _accepted(parts)

    # Where the archive already holds these UIDs (objects stored before the gateway knew them).
    # A recorded claim was checked against the archive when it was made (a store through here)
    # or reported by it (the study index), and the claim step below refuses any disagreement
    # with it: only unrecorded UIDs are looked up, the three levels at once. Appending to a
    # known series costs one archive query (the new SOP Instance UIDs), not three.
    def unrecorded(level: str, index: int) -> set[str]:
        return {_uids(p)[index] for p in parts} - {u for lvl, u in recorded if lvl == level}

    studies, series_at, instances = await asyncio.gather(
        *(_locate(archive, level, unrecorded(level, i)) for i, level in enumerate(_LEVELS))
    )
    for p in parts:
        study, series, sop = _uids(p)
        if any(loc.patient_id != (p.patient_id or "") for loc in studies.get(study, ())):
            conflict(p, "PatientID differs from the study's in the archive")
        elif any(loc.study_instance_uid != study for loc in series_at.get(series, ())):
            conflict(p, f"series {series} already exists in another study")
        elif any(
            (loc.study_instance_uid, loc.series_instance_uid) != (study, series)
            for loc in instances.get(sop, ())
        ):
            conflict(p, "SOP Instance UID already exists elsewhere")
    # Claim atomically; a concurrent claim that won makes its parts conflicts, then retry.
    for _ in range(3):
        parts = _accepted(parts)
        claims: dict[tuple[str, str], Claim] = {}
        owners: dict[tuple[str, str], list[Part]] = {}
        for p in parts:
            study, series, sop = _uids(p)
            for claim in (
                Claim("study", study, study, patient_id=p.patient_id or ""),
                Claim("series", series, study),
                Claim("instance", sop, study, series),
            ):
                claims[(claim.level, claim.uid)] = claim
                owners.setdefault((claim.level, claim.uid), []).append(p)
        conflicts, new = await store.claim(claims.values())
        if not conflicts:
            return new
        for c in conflicts:
            for p in owners[(c.level, c.uid)]:
                conflict(p, f"{c.level} UID {c.uid} is known under another study or patient")
    return []


_LEVELS = ("study", "series", "instance")


async def _locate(archive: StoreArchive, level: str, uids: set[str]) -> dict[str, set[Location]]:
    return await archive.locate(level, uids) if uids else {}


async def _verify(
    archive: StoreArchive, ctx: RequestContext, parts: list[Part], answer: dict[str, object]
) -> tuple[dict[str, object], list[Part]]:
    """Keep what landed where it was authorized; delete anything else (defence in depth)."""
    by_sop = {p.sop_instance_uid: p for p in parts}
    stored: list[Part] = []
    items = _sequence(answer, "00081199")
    kept_items: list[object] = []
    for item in items:
        sop = dicomjson.first(item, "00081155")
        part = by_sop.get(sop or "")
        where = _retrieve_path(dicomjson.first(item, "00081190"))
        if part is None:
            # The archive stored something nobody sent as such: a smuggled object.
            ctx.alerts.append(("integrity", f"archive reported an unexpected instance {sop}"))
            if where is not None and sop:
                await archive.delete_instance(where[0], where[1], sop)
            continue
        study, series, _ = _uids(part)
        if where is None:
            found = (await archive.locate("instance", [sop or ""])).get(sop or "", set())
            places = {(loc.study_instance_uid, loc.series_instance_uid) for loc in found}
        else:
            places = {(where[0], where[1])}
        if places != {(study, series)}:
            ctx.alerts.append(
                ("integrity", f"instance {sop} landed in {sorted(places)}, not in {study}")
            )
            for other_study, other_series in places - {(study, series)}:
                if other_series is not None:
                    await archive.delete_instance(other_study, other_series, _uids(part)[2])
            _refuse(part, PROCESSING_FAILURE, f"instance {sop} was not stored where authorized")
            continue
        stored.append(part)
        kept_items.append(item)
    result = dict(answer)
    if kept_items or "00081199" in answer:
        result["00081199"] = {"vr": "SQ", "Value": kept_items}
    return result, stored


def _uids(part: Part) -> tuple[str, str, str]:
    assert part.study_instance_uid and part.series_instance_uid and part.sop_instance_uid
    return part.study_instance_uid, part.series_instance_uid, part.sop_instance_uid


def _sequence(answer: dict[str, object], tag: str) -> list[dict[str, Any]]:
    element = answer.get(tag)
    if isinstance(element, dict) and isinstance(element.get("Value"), list):
        return [i for i in element["Value"] if isinstance(i, dict)]
    return []


def _retrieve_path(url: str | None) -> tuple[str, str, str] | None:
    """(study, series, instance) from a RetrieveURL `.../studies/S/series/X/instances/I`."""
    if not url:
        return None
    segments = urlsplit(url).path.rstrip("/").split("/")
    if len(segments) >= 6 and (segments[-6], segments[-4], segments[-2]) == (
        "studies",
        "series",
        "instances",
    ):
        return segments[-5], segments[-3], segments[-1]
    return None
