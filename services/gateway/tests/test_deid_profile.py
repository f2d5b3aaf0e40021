"""The de-identification profile (DA-1): attribute actions against PS3.15 Table E.1-1, and the
profile applied to the demo data in both representations (Part 10 via pydicom, DICOM JSON)."""

from __future__ import annotations

import io
import re

import pydicom
import pytest
from dicomweb_gateway.deid import Act, Options, Profile, Pseudonymizer, action, burned_in_reason
from dicomweb_gateway.deid.profile import row_for, shift_date, table
from ztstack import demo_data, dicom_objects

pytestmark = pytest.mark.control("DA-1")

KEY = b"k" * 32

# Every attribute of the demo data, with its row of PS3.15 (2025a) Table E.1-1 typed in from the
# standard: (tag, keyword, Basic Profile, Retain Longitudinal Temporal Information with Modified
# Dates option, Clean Descriptors option, Retain Patient Characteristics option) and the action
# the gateway takes with its options. `None`: the table does not list the attribute (kept).
E_1_1 = [
    ("00080005", "SpecificCharacterSet", None, Act.KEEP),
    ("00080008", "ImageType", None, Act.KEEP),
    ("00080016", "SOPClassUID", None, Act.KEEP),
    ("00080018", "SOPInstanceUID", ("U", "-", "-", "-"), Act.UID),
    ("00080020", "StudyDate", ("Z", "C", "-", "-"), Act.SHIFT),
    ("00080021", "SeriesDate", ("X/D", "C", "-", "-"), Act.SHIFT),
    ("00080023", "ContentDate", ("Z/D", "C", "-", "-"), Act.SHIFT),
    ("00080030", "StudyTime", ("Z", "C", "-", "-"), Act.SHIFT),
    ("00080031", "SeriesTime", ("X/D", "C", "-", "-"), Act.SHIFT),
    ("00080033", "ContentTime", ("Z/D", "C", "-", "-"), Act.SHIFT),
    ("00080050", "AccessionNumber", ("Z", "-", "-", "-"), Act.EMPTY),
    ("00080060", "Modality", None, Act.KEEP),
    ("00080070", "Manufacturer", None, Act.KEEP),
    ("00080080", "InstitutionName", ("X/Z/D", "-", "-", "-"), Act.REMOVE),
    ("00080090", "ReferringPhysicianName", ("Z", "-", "-", "-"), Act.EMPTY),
    ("00081030", "StudyDescription", ("X", "-", "C", "-"), Act.CLEAN),
    ("0008103E", "SeriesDescription", ("X", "-", "C", "-"), Act.CLEAN),
    ("00100010", "PatientName", ("Z", "-", "-", "-"), Act.EMPTY),
    ("00100020", "PatientID", ("Z/D", "-", "-", "-"), Act.DUMMY),
    ("00100030", "PatientBirthDate", ("Z", "-", "-", "-"), Act.EMPTY),
    ("00100040", "PatientSex", ("Z", "-", "-", "K"), Act.KEEP),
    ("00120010", "ClinicalTrialSponsorName", ("D", "-", "-", "-"), Act.DUMMY),
    ("00120020", "ClinicalTrialProtocolID", ("D", "-", "-", "-"), Act.DUMMY),
    ("00120021", "ClinicalTrialProtocolName", ("Z", "-", "-", "-"), Act.EMPTY),
    ("00120030", "ClinicalTrialSiteID", ("Z", "-", "-", "-"), Act.EMPTY),
    ("00120031", "ClinicalTrialSiteName", ("Z", "-", "-", "-"), Act.EMPTY),
    ("00120040", "ClinicalTrialSubjectID", ("D", "-", "-", "-"), Act.DUMMY),
    ("00180015", "BodyPartExamined", None, Act.KEEP),
    ("00180020", "ScanningSequence", None, Act.KEEP),
    ("00180021", "SequenceVariant", None, Act.KEEP),
    ("00180022", "ScanOptions", None, Act.KEEP),
    ("00180023", "MRAcquisitionType", None, Act.KEEP),
    ("00180050", "SliceThickness", None, Act.KEEP),
    ("00180060", "KVP", None, Act.KEEP),
    ("00180080", "RepetitionTime", None, Act.KEEP),
    ("00180081", "EchoTime", None, Act.KEEP),
    ("00180087", "MagneticFieldStrength", None, Act.KEEP),
    ("0020000D", "StudyInstanceUID", ("U", "-", "-", "-"), Act.UID),
    ("0020000E", "SeriesInstanceUID", ("U", "-", "-", "-"), Act.UID),
    ("00200010", "StudyID", ("Z", "-", "-", "-"), Act.EMPTY),
    ("00200011", "SeriesNumber", None, Act.KEEP),
    ("00200013", "InstanceNumber", None, Act.KEEP),
    ("00200032", "ImagePositionPatient", None, Act.KEEP),
    ("00200037", "ImageOrientationPatient", None, Act.KEEP),
    ("00200052", "FrameOfReferenceUID", ("U", "-", "-", "-"), Act.UID),
    ("00201040", "PositionReferenceIndicator", None, Act.KEEP),
    ("00201041", "SliceLocation", None, Act.KEEP),
    ("00280002", "SamplesPerPixel", None, Act.KEEP),
    ("00280004", "PhotometricInterpretation", None, Act.KEEP),
    ("00280010", "Rows", None, Act.KEEP),
    ("00280011", "Columns", None, Act.KEEP),
    ("00280030", "PixelSpacing", None, Act.KEEP),
    ("00280100", "BitsAllocated", None, Act.KEEP),
    ("00280101", "BitsStored", None, Act.KEEP),
    ("00280102", "HighBit", None, Act.KEEP),
    ("00280103", "PixelRepresentation", None, Act.KEEP),
    ("00281050", "WindowCenter", None, Act.KEEP),
    ("00281051", "WindowWidth", None, Act.KEEP),
    ("00281052", "RescaleIntercept", None, Act.KEEP),
    ("00281053", "RescaleSlope", None, Act.KEEP),
    ("00281054", "RescaleType", None, Act.KEEP),
    ("7FE00010", "PixelData", None, Act.KEEP),
]


def _demo_tags() -> set[str]:
    tags: set[str] = set()
    for s in demo_data.STUDIES:
        tags |= {f"{e.tag:08X}" for e in demo_data.instance(s, 1)}
    return tags


def test_the_table_covers_every_attribute_of_the_demo_data() -> None:
    assert {row[0] for row in E_1_1} == _demo_tags()


@pytest.mark.parametrize(("tag", "keyword", "row", "expected"), E_1_1, ids=[r[1] for r in E_1_1])
def test_attribute_action_matches_table_e_1_1(
    tag: str, keyword: str, row: tuple[str, str, str, str] | None, expected: Act
) -> None:
    assert pydicom.datadict.keyword_for_tag(int(tag, 16)) == keyword
    found = row_for(tag)
    if row is None:
        assert found is None
    else:
        assert found is not None
        got = (found.basic, found.modified_dates, found.clean_descriptors)
        assert (*got, found.patient_characteristics) == row
    assert action(tag) is expected


def test_options_off_fall_back_to_the_basic_profile() -> None:
    basic = Options(modified_dates=False, clean_descriptors=False, patient_characteristics=False)
    assert action("00080020", basic) is Act.EMPTY  # StudyDate Z
    assert action("00081030", basic) is Act.REMOVE  # StudyDescription X
    assert action("00100040", basic) is Act.EMPTY  # PatientSex Z


def test_private_curves_and_overlays_are_removed() -> None:
    assert action("00091010") is Act.REMOVE  # private
    assert action("60003000") is Act.REMOVE  # Overlay Data
    assert action("50001000") is Act.REMOVE  # Curve Data
    assert len(table()) > 600  # the whole table, not a hand-picked subset


def _profile(patient_id: str = "ZT-P003") -> Profile:
    return Profile(Pseudonymizer.for_project(KEY, "trial-42"), patient_id)


def _identifiers(s: demo_data.Study) -> list[bytes]:
    p = s.patient
    return [
        v.encode()
        for v in (p.name, p.patient_id, p.birth_date, s.accession_number, p.institution, "Trial")
    ]


@pytest.mark.parametrize("key", [s.key for s in demo_data.STUDIES])
def test_part10_instance_carries_no_identifier(key: str) -> None:
    s = demo_data.study(key)
    ds = demo_data.instance(s, 1)
    profile = _profile(s.patient.patient_id)
    profile.dataset(ds)
    data = dicom_objects.part10(ds)
    for identifier in _identifiers(s):
        assert identifier not in data, identifier
    for uid in (s.study_instance_uid, s.series_instance_uid, s.sop_instance_uid(1)):
        assert uid.encode() not in data
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in back.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107", "113108", "113105"]
    assert back.LongitudinalTemporalInformationModified == "MODIFIED"
    assert back.StudyInstanceUID == profile.pseudo.uid(s.study_instance_uid)
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert re.fullmatch(r"2\.25\.\d{1,39}", back.SOPInstanceUID)
    assert back.PatientSex == s.patient.sex  # Retain Patient Characteristics
    assert back.PixelData == demo_data.instance(s, 1).PixelData


def test_pseudonyms_are_consistent_per_project_and_differ_between_projects() -> None:
    uid = demo_data.study("p003-ct-chest").study_instance_uid
    a = Pseudonymizer.for_project(KEY, "trial-42")
    b = Pseudonymizer.for_project(KEY, "trial-42")
    c = Pseudonymizer.for_project(KEY, "trial-43")
    d = Pseudonymizer.for_project(b"other-key" * 4, "trial-42")
    assert a.uid(uid) == b.uid(uid)
    assert len({a.uid(uid), c.uid(uid), d.uid(uid)}) == 3
    assert a.issued == {uid: a.uid(uid)}
    assert len(a.uid(uid)) <= 64


def test_dates_of_one_patient_move_by_the_same_offset() -> None:
    profile = _profile("ZT-P003")
    days = profile.shift
    assert 30 <= days < 30 + 3650
    assert profile.value(Act.SHIFT, "DA", "20250115") == shift_date("20250115", days)
    assert profile.value(Act.SHIFT, "DA", "20250101-20250131") == "-".join(
        str(shift_date(d, days)) for d in ("20250101", "20250131")
    )
    assert profile.value(Act.SHIFT, "DT", "20250115093000")[8:] == "093000"  # type: ignore[index]
    assert profile.value(Act.SHIFT, "TM", "093000") == "093000"
    assert _profile("ZT-P001").shift != days or _profile("ZT-P002").shift != days


def test_clean_descriptors_drops_a_description_naming_the_patient() -> None:
    profile = _profile().with_identifiers(["Trial^Carol", "ZT-A0005"])
    assert profile.value(Act.CLEAN, "LO", "CT chest") == "CT chest"
    assert profile.value(Act.CLEAN, "LO", "CT chest for Carol") is None
    assert profile.value(Act.CLEAN, "LO", "order zt-a0005") is None


def test_json_and_part10_agree() -> None:
    s = demo_data.study("p003-ct-chest")
    original = demo_data.instance(s, 2)
    as_json = original.to_json_dict(bulk_data_element_handler=lambda e: "https://gw/bulk")
    via_json = _profile().json(as_json, url=lambda u: u + "?pseudonymous")
    ds = demo_data.instance(s, 2)
    _profile().dataset(ds)
    via_part10 = ds.to_json_dict(bulk_data_element_handler=lambda e: "https://gw/bulk?pseudonymous")
    marked = _profile().mark_json(via_json)
    assert marked == via_part10
    text = str(marked)
    for identifier in _identifiers(s):
        assert identifier.decode() not in text


def test_burned_in_annotation_and_secondary_capture_are_refused() -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    sc = "1.2.840.10008.5.1.4.1.1.7"
    assert burned_in_reason(ct, None, False) is None
    assert burned_in_reason(ct, "NO", False) is None
    assert burned_in_reason(ct, "YES", False) == "BurnedInAnnotation is YES"
    assert burned_in_reason(ct, "YES", True) == "BurnedInAnnotation is YES"
    assert burned_in_reason(sc, None, False) is not None
    assert burned_in_reason(sc, "NO", True) is None
