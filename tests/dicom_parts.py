"""DICOM objects and STOW-RS bodies for end-to-end tests (one place for every test file)."""

from __future__ import annotations

import io
import time
import uuid

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# A DOS/PE header in the 128-byte preamble: the CVE-2019-11687 polyglot (PS3.10 7.5).
PE_PREAMBLE = b"MZ" + bytes(0x3A) + (0x40).to_bytes(4, "little") + b"PE\0\0"


def new_instance(
    study: str | None = None,
    patient_id: str | None = None,
    rows: int = 64,
    sop_class: str = SECONDARY_CAPTURE,
    modality: str = "OT",
) -> pydicom.Dataset:
    """A small image for a North General patient (ingest labels it site:north)."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id or "ZT-E2E-" + ds.StudyInstanceUID[-6:]
    ds.PatientName = "E2E^Test"
    ds.InstitutionName = "North General Hospital"
    ds.StudyDate = "20260101"
    ds.Modality = modality
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    rng = np.random.default_rng(time.time_ns())
    ds.PixelData = rng.integers(0, 4095, size=(rows, rows), dtype=np.uint16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def part10(ds: pydicom.Dataset, preamble: bytes | None = None) -> bytes:
    """PS3.10 file bytes; `preamble` (padded to 128 bytes) replaces the zero preamble."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    if preamble is not None:
        data = preamble.ljust(128, b"\0")[:128] + data[128:]
    return data


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
