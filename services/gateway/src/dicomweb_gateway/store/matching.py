"""QIDO-RS matching keys (PS3.18 8.3.4, PS3.4 C.2.2.2) as SQL conditions on the study index.

Semantics (docs/policy.md, "Study index"):

- An empty value or a lone `*` is universal matching: no condition.
- UIDs (`StudyInstanceUID`): one UID or a comma-separated list; exact.
- Dates (`StudyDate`, DA): `YYYYMMDD` exact, or a range `A-B`, `A-`, `-B` (inclusive). Times
  (`StudyTime`, TM): the same; the upper bound compares on its own length, so `-1300` includes
  `130000` and `130059.5`. A study without the attribute never matches a range.
- Identifiers (`PatientID`, `AccessionNumber`, `StudyID`): case-sensitive; `*` any run of
  characters and `?` exactly one (wildcard matching), otherwise exact.
- Person names and descriptions (`PatientName`, `ReferringPhysicianName`, `StudyDescription`):
  case-insensitive (as the archive treats PN), with the same wildcards.
- `ModalitiesInStudy`: any of the study's modalities equals (or matches the wildcard of) one of
  the listed values (`CT,MR` or `CT\\MR`).
- `fuzzymatching=true` (PS3.18 8.3.4.1; the archive here ignores it, the gateway defines it):
  for `PatientName` and `ReferringPhysicianName` a value without wildcards matches every name
  one of whose components (family, given, middle, ... separated by `^` or a space) begins with
  it, case-insensitively: `PatientName=ali` matches `NORTH^ALICE`.

Any other key is not held by the index: it is returned as "residual" and matched by the archive
on the permitted candidates only (dicomweb search, bounded batches).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select

from .models import StudyIndexEntry, StudyIndexModality

E = StudyIndexEntry

INDEXED_STUDY_KEYS = frozenset(
    {
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "StudyID",
        "StudyDescription",
    }
)

_EXACT_COLUMNS = {
    "PatientID": E.patient_id,
    "AccessionNumber": E.accession_number,
    "StudyID": E.study_id,
}
_FOLDED_COLUMNS = {
    "PatientName": E.patient_name_key,
    "ReferringPhysicianName": E.referring_physician_key,
    "StudyDescription": E.study_description_key,
}
_FUZZY_KEYS = frozenset({"PatientName", "ReferringPhysicianName"})


def fold(value: str) -> str:
    """The form case-insensitive keys are stored and compared in."""
    return value.upper()


def study_conditions(
    matches: tuple[tuple[str, str], ...], fuzzy: bool, dialect: str
) -> tuple[list[ColumnElement[bool]], list[tuple[str, str]]]:
    """(SQL conditions for the keys the index holds, the (keyword, value) pairs it does not)."""
    conditions: list[ColumnElement[bool]] = []
    residual: list[tuple[str, str]] = []
    for keyword, value in matches:
        if keyword not in INDEXED_STUDY_KEYS:
            residual.append((keyword, value))
            continue
        if value in ("", "*"):
            continue
        if keyword == "StudyInstanceUID":
            conditions.append(E.study_instance_uid.in_([u for u in value.split(",") if u]))
        elif keyword == "StudyDate":
            conditions.append(_range(E.study_date, value, dialect))
        elif keyword == "StudyTime":
            conditions.append(_range(E.study_time, value, dialect))
        elif keyword in _EXACT_COLUMNS:
            conditions.append(_text(_EXACT_COLUMNS[keyword], value, dialect))
        elif keyword in _FOLDED_COLUMNS:
            column = _FOLDED_COLUMNS[keyword]
            folded = fold(value)
            if fuzzy and keyword in _FUZZY_KEYS and not _wild(folded):
                conditions.append(
                    or_(
                        like(column, folded + "*", dialect),
                        like(column, "*^" + folded + "*", dialect),
                        like(column, "* " + folded + "*", dialect),
                    )
                )
            else:
                conditions.append(_text(column, folded, dialect))
        elif keyword == "ModalitiesInStudy":
            wanted = [m for m in value.replace("\\", ",").split(",") if m]
            plain = [m for m in wanted if not _wild(m)]
            tests: list[ColumnElement[bool]] = []
            if plain:
                tests.append(StudyIndexModality.modality.in_(plain))
            tests += [like(StudyIndexModality.modality, m, dialect) for m in wanted if _wild(m)]
            conditions.append(
                exists(
                    select(StudyIndexModality.modality).where(
                        StudyIndexModality.study_instance_uid == E.study_instance_uid,
                        or_(*tests),
                    )
                )
            )
    return conditions, residual


def _wild(value: str) -> bool:
    return "*" in value or "?" in value


def _text(column: Any, value: str, dialect: str) -> ColumnElement[bool]:
    return like(column, value, dialect) if _wild(value) else column == value


def like(column: Any, pattern: str, dialect: str) -> ColumnElement[bool]:
    """Case-sensitive DICOM wildcard matching (`*`, `?`) on both databases.

    SQLite's LIKE ignores ASCII case, so SQLite uses GLOB, whose `*` and `?` are DICOM's; its
    one other special character, `[`, is written as the class `[[]` (values may hold any
    character of their VR, issue 14). PostgreSQL's LIKE is case-sensitive: `%`, `_` and the
    escape character are escaped, then the wildcards translated.
    """
    if dialect == "sqlite":
        result: ColumnElement[bool] = column.op("GLOB")(pattern.replace("[", "[[]"))
        return result
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    result = column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")
    return result


def _range(column: Any, value: str, dialect: str) -> ColumnElement[bool]:
    if "-" not in value:
        return _text(column, value, dialect)
    low, _, high = value.partition("-")
    parts: list[ColumnElement[bool]] = [column != ""]
    if low:
        parts.append(column >= low)
    if high:
        parts.append(func.substr(column, 1, len(high)) <= high)
    return and_(*parts)
