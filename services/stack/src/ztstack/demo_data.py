"""Deterministic demo DICOM data (docs/internals.md, "Demo data and realm facts").

4 patients, 8 studies, one CT or MR series each with a few slices of a synthetic phantom (real,
non-uniform 16-bit pixel data that OHIF can window). Every UID derives from fixed entropy, so
the seed, the realm, the policy and the tests agree on them without sharing state. Files are
Explicit VR Little Endian with an all-zero 128-byte preamble (PS3.10 section 7.1), built and
encoded by ztstack.dicom_objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

from . import dicom_objects

ROWS = COLUMNS = 128
SLICES = 4
STUDY_DATE = "20250115"


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str
    birth_date: str
    sex: str
    institution: str


@dataclass(frozen=True)
class Study:
    key: str  # stable short name, e.g. "p001-ct-chest"
    patient: Patient
    modality: str  # CT | MR
    body_part: str  # BodyPartExamined
    description: str
    accession_number: str
    trial_protocol_id: str | None = None

    @property
    def study_instance_uid(self) -> str:
        return _uid(self.key, "study")

    @property
    def series_instance_uid(self) -> str:
        return _uid(self.key, "series")

    def sop_instance_uid(self, number: int) -> str:
        return _uid(self.key, "instance", str(number))


NORTH = "North General Hospital"
SOUTH = "South Valley Clinic"
ALICE = Patient("ZT-P001", "North^Alice", "19700312", "F", NORTH)
BOB = Patient("ZT-P002", "South^Bob", "19650704", "M", SOUTH)
CAROL = Patient("ZT-P003", "Trial^Carol", "19801122", "F", NORTH)
DAN = Patient("ZT-P004", "Vip^Dan", "19581201", "M", NORTH)

STUDIES: tuple[Study, ...] = (
    Study("p001-ct-chest", ALICE, "CT", "CHEST", "CT chest", "ZT-A0001"),
    Study("p001-mr-brain", ALICE, "MR", "BRAIN", "MR brain", "ZT-A0002"),
    Study("p002-ct-abdomen", BOB, "CT", "ABDOMEN", "CT abdomen", "ZT-A0003"),
    # The legal-hold study: ingest rules label it by this accession number.
    Study("p002-mr-knee", BOB, "MR", "KNEE", "MR knee", "ZT-LH-0001"),
    # The research study: ingest rules label it research:trial-42.
    Study("p003-ct-chest", CAROL, "CT", "CHEST", "CT chest (trial)", "ZT-A0005", "TRIAL-42"),
    Study("p003-mr-brain", CAROL, "MR", "BRAIN", "MR brain", "ZT-A0006"),
    Study("p004-ct-head", DAN, "CT", "HEAD", "CT head", "ZT-A0007"),
    Study("p004-mr-spine", DAN, "MR", "SPINE", "MR spine", "ZT-A0008"),
)


def _uid(*parts: str) -> str:
    return str(generate_uid(entropy_srcs=["zt-demo", *parts]))


def study(key: str) -> Study:
    return next(s for s in STUDIES if s.key == key)


def phantom(modality: str, slice_index: int, variant: int) -> np.ndarray:
    """A Shepp-Logan-like head phantom: ellipses that change with the slice, plus texture.

    CT values are stored as HU + 1024, unsigned 12-bit; MR values are unsigned 12-bit.
    """
    y, x = np.mgrid[-1 : 1 : ROWS * 1j, -1 : 1 : COLUMNS * 1j]
    z = (slice_index - (SLICES - 1) / 2) / SLICES
    # (centre x, centre y, semi-axis a, semi-axis b, value)
    ellipses = [
        (0.0, 0.0, 0.72 - 0.1 * abs(z), 0.92 - 0.1 * abs(z), 1.0),
        (0.0, -0.02, 0.66 - 0.1 * abs(z), 0.86 - 0.1 * abs(z), -0.6),
        (0.22, 0.0 + 0.1 * z, 0.11, 0.31, -0.25),
        (-0.22, 0.0 - 0.1 * z, 0.16, 0.41, -0.25),
        (0.0, 0.35, 0.21, 0.25, 0.15),
        (0.08 * variant, -0.6, 0.046, 0.023 + 0.01 * variant, 0.3),
    ]
    img = np.zeros((ROWS, COLUMNS))
    for cx, cy, a, b, value in ellipses:
        img[((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1] += value
    rng = np.random.default_rng(1000 * variant + slice_index)
    img += 0.02 * rng.standard_normal(img.shape)
    if modality == "CT":
        # Hounsfield units a CT window (W400/L40) shows: air outside, a bone rim (the skull),
        # brain around +40 HU inside, CSF-like ventricles near 0, denser spots up to ~+100.
        outer = ellipses[0]
        head = ((x - outer[0]) / outer[2]) ** 2 + ((y - outer[1]) / outer[3]) ** 2 <= 1
        inner = ellipses[1]
        brain = ((x - inner[0]) / inner[2]) ** 2 + ((y - inner[1]) / inner[3]) ** 2 <= 1
        hu = np.full(img.shape, -1000.0)
        hu[head] = 40 + (img[head] - 0.4) * 200
        hu[head & ~brain] = 1000 + 50 * img[head & ~brain]
        # Stored unsigned in 12 bits (0..4095) with RescaleIntercept -1024, as many CT scanners
        # do; signed 12-bit would wrap bone (above +1023 HU) to negative values.
        stored: np.ndarray = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
        return stored
    return np.clip(img * 2000 + 50, 0, 4095).astype(np.uint16)


def study_attributes(s: Study) -> dict[str, Any]:
    """The patient and study attributes every instance of s carries (also volume.py's)."""
    return {
        "SpecificCharacterSet": "ISO_IR 100",
        "StudyDate": STUDY_DATE,
        "SeriesDate": STUDY_DATE,
        "ContentDate": STUDY_DATE,
        "AccessionNumber": s.accession_number,
        "Manufacturer": "ZT demo",
        "InstitutionName": s.patient.institution,
        "ReferringPhysicianName": "Referrer^Demo",
        "StudyDescription": s.description,
        "PatientName": s.patient.name,
        "PatientBirthDate": s.patient.birth_date,
        "PatientSex": s.patient.sex,
        "BodyPartExamined": s.body_part,
    }


def instance(s: Study, number: int) -> Dataset:
    """One image of study s (number 1..SLICES), a complete CT/MR Image IOD subset."""
    variant = STUDIES.index(s)
    ds = dicom_objects.instance(
        study=s.study_instance_uid,
        series=s.series_instance_uid,
        sop=s.sop_instance_uid(number),
        patient_id=s.patient.patient_id,
        sop_class=CTImageStorage if s.modality == "CT" else MRImageStorage,
        modality=s.modality,
        rows=ROWS,
        columns=COLUMNS,
        bits=16,
        pixels=phantom(s.modality, number - 1, variant).tobytes(),
        **study_attributes(s),
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
    ds.SeriesDescription = f"{s.description} axial"
    if s.trial_protocol_id:
        ds.ClinicalTrialSponsorName = "ZT Research"
        ds.ClinicalTrialProtocolID = s.trial_protocol_id
        ds.ClinicalTrialProtocolName = "Zero-trust demo trial"
        ds.ClinicalTrialSiteID = "NORTH"
        ds.ClinicalTrialSiteName = NORTH
        ds.ClinicalTrialSubjectID = s.patient.patient_id
    ds.SliceThickness = "5"
    ds.StudyID = s.key[:16]
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.FrameOfReferenceUID = _uid(s.key, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [-128, -128, 5 * (number - 1)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = 5 * (number - 1)
    ds.PixelSpacing = [2, 2]
    if s.modality == "CT":
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.KVP = "120"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    else:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = "20"
        ds.RepetitionTime = "500"
        ds.MagneticFieldStrength = "1.5"
        ds.WindowCenter, ds.WindowWidth = "1000", "2000"
    return ds


def instances() -> Iterator[tuple[Study, int, Dataset]]:
    for s in STUDIES:
        for number in range(1, SLICES + 1):
            yield s, number, instance(s, number)
