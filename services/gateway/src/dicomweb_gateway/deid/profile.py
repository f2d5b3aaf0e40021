"""PS3.15 Annex E Basic Application Level Confidentiality Profile, with three options.

Options (PS3.15 E.3), each recorded in De-identification Method Code Sequence (CID 7050):

- 113100 Basic Application Confidentiality Profile;
- 113107 Retain Longitudinal Temporal Information with Modified Dates Option: every date of a
  patient moves back by the same keyed number of days (`pseudonyms.date_shift_days`), times of
  day are kept, so intervals survive and the real dates do not;
- 113108 Retain Patient Characteristics Option: sex, age, size, weight and the like stay;
- 113105 Clean Descriptors Option: descriptions (Study/Series Description, ...) stay unless they
  carry one of the patient's own identifiers (name parts, IDs, accession number, birth date),
  in which case they are emptied. This is a narrow "clean": free text naming anyone else is not
  detected, so the option is only as good as the descriptions a site writes.

The action of every attribute comes from `table_e1_1.tsv`, PS3.15 Table E.1-1 as data. Private
attributes (odd groups) and curve/overlay groups are removed (the Retain Safe Private option
is not offered). Attributes the table does not list are kept (the profile's rule), and
sequences are walked so that nested attributes get their own actions.

Hand-written, and why: pydicom reads and writes the objects (Part 10 and its data dictionary
for VRs) but has no Annex E engine; the `deid` package works on files with recipes and has no
DICOM JSON path, while the gateway must apply one table to DICOM JSON (QIDO results, metadata)
and to Part 10 instances alike, with its own keyed UID mapping. So the table is data, and the
walker over both representations is the ~250 lines below.
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from .pseudonyms import Pseudonymizer

TABLE = Path(__file__).with_name("table_e1_1.tsv")


class Act(enum.StrEnum):
    KEEP = "K"
    REMOVE = "X"
    EMPTY = "Z"  # zero length
    DUMMY = "D"  # a dummy value of the same VR (identifiers: a keyed pseudonym)
    UID = "U"  # a keyed pseudonymous UID
    CLEAN = "C"  # descriptors: kept unless they carry the patient's identifiers
    SHIFT = "S"  # dates moved by the patient's offset (modified dates option)


@dataclass(frozen=True)
class Row:
    tag: str  # 8 hex digits, lower-case `x` for "any"
    basic: str
    modified_dates: str
    clean_descriptors: str
    patient_characteristics: str
    name: str


@dataclass(frozen=True)
class Options:
    modified_dates: bool = True
    clean_descriptors: bool = True
    patient_characteristics: bool = True

    def codes(self) -> list[tuple[str, str]]:
        """(code value, meaning) of DCM CID 7050 for the De-identification Method Code Sequence."""
        codes = [("113100", "Basic Application Confidentiality Profile")]
        if self.modified_dates:
            codes.append(
                ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
            )
        if self.patient_characteristics:
            codes.append(("113108", "Retain Patient Characteristics Option"))
        if self.clean_descriptors:
            codes.append(("113105", "Clean Descriptors Option"))
        return codes


DEFAULT_OPTIONS = Options()
METHOD = "PS3.15 E.1 Basic Profile; modified dates; patient characteristics; clean descriptors"


@cache
def table() -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        tag, basic, dates, clean, chars, name = line.split("\t")
        rows[tag] = Row(tag, basic, dates, clean, chars, name)
    return rows


@cache
def _patterns() -> list[tuple[re.Pattern[str], Row]]:
    return [
        (re.compile("^" + tag.replace("x", "[0-9A-F]") + "$"), row)
        for tag, row in table().items()
        if "x" in tag
    ]


def row_for(tag: str) -> Row | None:
    row = table().get(tag.upper())
    if row is not None:
        return row
    return next((r for p, r in _patterns() if p.match(tag.upper())), None)


# A Basic Profile entry with a choice: the gateway always takes the same branch.
_BASIC = {
    "X": Act.REMOVE,
    "Z": Act.EMPTY,
    "D": Act.DUMMY,
    "U": Act.UID,
    "K": Act.KEEP,
    "C": Act.CLEAN,
    "X/Z": Act.REMOVE,
    "X/D": Act.REMOVE,
    "X/Z/D": Act.REMOVE,
    "Z/D": Act.DUMMY,  # e.g. Patient ID: a keyed pseudonym keeps a patient's studies together
    "X/Z/U*": Act.KEEP,  # kept; the UIDs inside are replaced by their own rows
}


def action(tag: str, options: Options = DEFAULT_OPTIONS) -> Act:
    """The resolved action for one attribute (8 hex digits), options applied."""
    if int(tag[:4], 16) % 2 == 1:
        return Act.REMOVE  # private attributes (Retain Safe Private option not offered)
    row = row_for(tag)
    if row is None:
        return Act.KEEP
    if options.modified_dates and row.modified_dates == "C":
        return Act.SHIFT
    if options.clean_descriptors and row.clean_descriptors == "C":
        return Act.CLEAN
    if options.patient_characteristics and row.patient_characteristics == "K":
        return Act.KEEP
    return _BASIC[row.basic]


# ------------------------------------------------------------------------------ values

_NUMERIC = {"IS", "DS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"}
_TEXT = {"LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE", "UR"}
_DUMMY = {"PN": "ANONYMIZED", "DA": "19000101", "TM": "000000", "DT": "19000101000000"}
_DUMMY |= {"AS": "000Y", "CS": "ANONYMIZED"}


def shift_date(value: str, days: int) -> str | None:
    """DA (or the date of a DT) moved `days` back; None when it is not a date."""
    if not re.fullmatch(r"\d{8}", value[:8]) or len(value) < 8:
        return None
    try:
        moved = datetime.date(
            int(value[:4]), int(value[4:6]), int(value[6:8])
        ) - datetime.timedelta(days=days)
    except ValueError:
        return None
    return moved.strftime("%Y%m%d") + value[8:]


@dataclass
class Profile:
    """The profile for one patient's objects: `pseudo` holds the project's keys."""

    pseudo: Pseudonymizer
    patient_id: str
    identifiers: frozenset[str] = frozenset()  # the patient's own identifiers (lower-case)
    options: Options = DEFAULT_OPTIONS

    @property
    def shift(self) -> int:
        return self.pseudo.date_shift_days(self.patient_id)

    def with_identifiers(self, values: Iterable[str]) -> Profile:
        found = set(self.identifiers)
        for value in values:
            for part in re.split(r"[\^= ]+", value.lower()):
                if len(part) >= 3:
                    found.add(part)
        return Profile(self.pseudo, self.patient_id, frozenset(found), self.options)

    def value(self, act: Act, vr: str, value: str) -> str | None:
        """One string value after `act` (None: drop the value)."""
        if act is Act.KEEP:
            return value
        if act is Act.UID:
            return self.pseudo.uid(value) if value else value
        if act is Act.SHIFT:
            if vr in ("DA", "DT"):
                return "-".join(
                    (shift_date(v, self.shift) or "") if v else "" for v in value.split("-")
                )
            return value  # times of day are kept with modified dates
        if act is Act.CLEAN:
            low = value.lower()
            return None if any(token in low for token in self.identifiers) else value
        if act is Act.DUMMY:
            if vr == "UI":
                return self.pseudo.uid(value)
            if vr in _NUMERIC:
                return "0"
            if vr in ("LO", "SH", "LT", "ST", "UT", "UC") or (vr == "CS" and not value):
                return self.pseudo.text(value)
            return _DUMMY.get(vr, "")
        return None

    # -------------------------------------------------------------------- DICOM JSON

    def json(self, item: dict[str, Any], url: Callable[[str], str] | None = None) -> dict[str, Any]:
        """A de-identified copy of one DICOM JSON dataset (PS3.18 F.2). `url` maps a
        BulkDataURI or RetrieveURL to its pseudonymous form."""
        ids = [_json_text(item.get(t)) for t in _IDENTIFYING_TAGS]
        profile = self.with_identifiers(v for v in ids if v)
        return profile._json(item, url)

    def _json(self, item: dict[str, Any], url: Callable[[str], str] | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tag, element in item.items():
            if not isinstance(element, dict) or not re.fullmatch(r"[0-9A-Fa-f]{8}", tag):
                continue
            act = action(tag, self.options)
            if act is Act.REMOVE:
                continue
            vr = str(element.get("vr", "UN"))
            new: dict[str, Any] = {"vr": vr}
            if "BulkDataURI" in element:
                if act is not Act.KEEP or url is None:
                    continue  # bulk data of an attribute the profile changes: not offered
                new["BulkDataURI"] = url(str(element["BulkDataURI"]))
            elif "InlineBinary" in element:
                if act is not Act.KEEP:
                    continue
                new["InlineBinary"] = element["InlineBinary"]
            elif "Value" in element and act is not Act.EMPTY:
                values = element["Value"]
                if vr == "SQ":
                    if act is Act.KEEP:
                        new["Value"] = [self._json(i, url) for i in values if isinstance(i, dict)]
                elif vr == "UR" and url is not None and act is Act.KEEP:
                    new["Value"] = [url(str(v)) for v in values]
                else:
                    kept = [self._json_value(act, vr, v) for v in values]
                    if kept and all(v is not None for v in kept):
                        new["Value"] = kept
            out[tag] = new
        return out

    def _json_value(self, act: Act, vr: str, value: Any) -> Any:
        if act is Act.KEEP:
            return value
        if vr == "PN":
            text = value.get("Alphabetic", "") if isinstance(value, dict) else str(value)
            changed = self.value(act, vr, text)
            return None if changed is None else {"Alphabetic": changed}
        if vr in _NUMERIC and act is Act.DUMMY:
            return 0
        return self.value(act, vr, str(value))

    def mark_json(self, item: dict[str, Any]) -> dict[str, Any]:
        """PS3.15 E.1.1: Patient Identity Removed, the method and its codes."""
        codes = [
            {
                "00080100": {"vr": "SH", "Value": [code]},
                "00080102": {"vr": "SH", "Value": ["DCM"]},
                "00080104": {"vr": "LO", "Value": [meaning]},
            }
            for code, meaning in self.options.codes()
        ]
        item["00120062"] = {"vr": "CS", "Value": ["YES"]}
        item["00120063"] = {"vr": "LO", "Value": [METHOD[:64]]}
        item["00120064"] = {"vr": "SQ", "Value": codes}
        if self.options.modified_dates:
            item["00280303"] = {"vr": "CS", "Value": ["MODIFIED"]}
        return dict(sorted(item.items()))

    # -------------------------------------------------------------------- pydicom

    def dataset(self, ds: Dataset) -> Dataset:
        """De-identify a dataset in place (and its file meta), then mark it (E.1.1)."""
        ids = [str(ds[t].value) for t in _IDENTIFYING_TAGS_INT if t in ds]
        profile = self.with_identifiers(v for v in ids if v and v != "None")
        profile._dataset(ds)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self.pseudo.uid(str(meta.MediaStorageSOPInstanceUID))
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD[:64]
        items = []
        for code, meaning in self.options.codes():
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        if self.options.modified_dates:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        return ds

    def _dataset(self, ds: Dataset) -> None:
        for elem in list(ds):
            tag = f"{elem.tag:08X}"
            act = action(tag, self.options)
            if act is Act.REMOVE:
                del ds[elem.tag]
                continue
            if elem.VR == "SQ":
                if act is Act.KEEP:
                    for item in elem.value:
                        self._dataset(item)
                else:
                    elem.value = Sequence()
                continue
            if act is Act.KEEP:
                continue
            self._element(elem, act)

    def _element(self, elem: DataElement, act: Act) -> None:
        if act is Act.EMPTY or elem.value is None or elem.value == "":
            elem.value = None if elem.VR not in ("OB", "OW", "UN") else b""
            return
        if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            elem.value = b""
            return
        values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
        changed = [self.value(act, elem.VR, str(v)) for v in values]
        if any(v is None for v in changed):
            elem.value = None
        elif elem.VR in _NUMERIC:
            elem.value = 0 if elem.VR not in ("IS", "DS") else "0"
        else:
            elem.value = changed if len(changed) > 1 else changed[0]


_IDENTIFYING_TAGS = (
    "00100010",  # PatientName
    "00100020",  # PatientID
    "00101000",  # OtherPatientIDs
    "00100030",  # PatientBirthDate
    "00080050",  # AccessionNumber
    "00120040",  # ClinicalTrialSubjectID
    "00101001",  # OtherPatientNames
)
_IDENTIFYING_TAGS_INT = tuple(int(t, 16) for t in _IDENTIFYING_TAGS)


def _json_text(element: Any) -> str | None:
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return None
    first = values[0]
    if isinstance(first, dict):
        return str(first.get("Alphabetic", "")) or None
    return str(first)


# ------------------------------------------------------------------------------ burned-in text

# Secondary Capture Image Storage and its multi-frame variants (PS3.4 B.5): screenshots and
# scanned documents, where identifying text is part of the pixels.
SECONDARY_CAPTURE = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)


def burned_in_reason(
    sop_class_uid: str | None, burned_in_annotation: str | None, allow_secondary_capture: bool
) -> str | None:
    """Why an instance may carry burned-in identifying text (None: it may be served)."""
    if (burned_in_annotation or "").strip().upper() == "YES":
        return "BurnedInAnnotation is YES"
    if sop_class_uid in SECONDARY_CAPTURE and not allow_secondary_capture:
        return f"secondary capture ({sop_class_uid})"
    return None


__all__ = [
    "DEFAULT_OPTIONS",
    "Act",
    "Options",
    "Profile",
    "action",
    "burned_in_reason",
    "row_for",
    "table",
]
