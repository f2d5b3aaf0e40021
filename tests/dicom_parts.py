"""DICOM objects and STOW-RS bodies for end-to-end tests; the objects come from
ztstack.dicom_objects, the one builder shared with the unit tests and scripts/."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pydicom
from ztstack.dicom_objects import CT_IMAGE, PE_PREAMBLE, SECONDARY_CAPTURE, instance, part10

__all__ = ["CT_IMAGE", "PE_PREAMBLE", "SECONDARY_CAPTURE", "multipart", "new_instance", "part10"]


def new_instance(
    study: str | None = None,
    patient_id: str | None = None,
    rows: int = 64,
    sop_class: str = SECONDARY_CAPTURE,
    modality: str = "OT",
) -> pydicom.Dataset:
    """A small image for a North General patient (ingest labels it site:north)."""
    rng = np.random.default_rng(time.time_ns())
    ds = instance(
        study=study,
        sop_class=sop_class,
        modality=modality,
        rows=rows,
        bits=16,
        pixels=rng.integers(0, 4095, size=(rows, rows), dtype=np.uint16).tobytes(),
        PatientName="E2E^Test",
        InstitutionName="North General Hospital",
        StudyDate="20260101",
    )
    ds.PatientID = patient_id or "ZT-E2E-" + ds.StudyInstanceUID[-6:]
    return ds


def multipart(parts: list[bytes], boundary: str | None = None) -> tuple[str, bytes]:
    """(Content-Type, body) of a STOW-RS multipart/related request (PS3.18 10.5)."""
    boundary = boundary or uuid.uuid4().hex
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
            for p in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body
