"""Demo data: the table of docs/internals.md, deterministic, valid Part 10 files."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from ztstack import demo_data, dicom_objects


def test_four_patients_eight_studies_ct_and_mr() -> None:
    assert len({s.patient.patient_id for s in demo_data.STUDIES}) == 4
    assert len({s.study_instance_uid for s in demo_data.STUDIES}) == 8
    for pid in ("ZT-P001", "ZT-P002", "ZT-P003", "ZT-P004"):
        modalities = {s.modality for s in demo_data.STUDIES if s.patient.patient_id == pid}
        assert modalities == {"CT", "MR"}


def test_policy_cases_present() -> None:
    sites = {s.patient.institution for s in demo_data.STUDIES}
    assert sites == {"North General Hospital", "South Valley Clinic"}
    knee = demo_data.study("p002-mr-knee")
    assert knee.accession_number == "ZT-LH-0001"
    trial = [s for s in demo_data.STUDIES if s.trial_protocol_id == "TRIAL-42"]
    assert [s.patient.patient_id for s in trial] == ["ZT-P003"]


def test_uids_are_deterministic_and_valid() -> None:
    s = demo_data.STUDIES[0]
    assert s.study_instance_uid == demo_data.study(s.key).study_instance_uid
    a = demo_data.instance(s, 1)
    b = demo_data.instance(s, 1)
    assert a.SOPInstanceUID == b.SOPInstanceUID
    assert dicom_objects.part10(a) == dicom_objects.part10(b)
    for uid in (a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID):
        assert pydicom.uid.UID(uid).is_valid


def test_files_are_part10_explicit_le_with_zero_preamble_and_real_pixels() -> None:
    for s, _number, ds in demo_data.instances():
        raw = dicom_objects.part10(ds)
        assert raw[:128] == bytes(128)
        assert raw[128:132] == b"DICM"
        back = pydicom.dcmread(io.BytesIO(raw))
        assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert back.SOPClassUID == (CTImageStorage if s.modality == "CT" else MRImageStorage)
        pixels = back.pixel_array
        assert pixels.shape == (demo_data.ROWS, demo_data.COLUMNS)
        assert np.unique(pixels).size > 100  # not a flat image
        assert back.InstitutionName == s.patient.institution
