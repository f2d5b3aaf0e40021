"""The one builder of DICOM objects for the demo data, the tests and the scripts (issue 17).

`instance()` gives an image data set with its file meta information (Explicit VR Little
Endian); `part10()` encodes it as a PS3.10 file, with a chosen preamble when a test needs a
hostile one. The gateway itself never imports this module: only the demo data, the tests
(tests/, services/*/tests) and scripts/ do.
"""

from __future__ import annotations

import io
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

CT_IMAGE = str(CTImageStorage)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# A DOS/PE header in the 128-byte preamble: the CVE-2019-11687 polyglot (PS3.10 7.5).
PE_PREAMBLE = b"MZ" + bytes(0x3A) + (0x40).to_bytes(4, "little") + b"PE\0\0"


def instance(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    patient_id: str | None = None,
    sop_class: str = SECONDARY_CAPTURE,
    modality: str | None = "OT",
    rows: int = 4,
    columns: int | None = None,
    bits: int = 8,
    pixels: bytes | None = None,
    **attributes: Any,
) -> Dataset:
    """A monochrome image: fresh UIDs unless given, `bits` 8 (8 stored) or 16 (12 stored),
    `pixels` (default zeros) of rows x columns; `attributes` are further keywords, e.g.
    PatientName="North^Alice". File meta information for Explicit VR Little Endian."""
    columns = rows if columns is None else columns
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop or generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    if patient_id is not None:
        ds.PatientID = patient_id
    if modality is not None:
        ds.Modality = modality
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = bits
    ds.BitsStored = 8 if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(rows * columns * bits // 8) if pixels is None else pixels
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return file_meta(ds)


def file_meta(ds: Dataset) -> Dataset:
    """(Re)write ds's file meta information from its SOP Class and Instance UIDs."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def part10(ds: Dataset, preamble: bytes | None = None) -> bytes:
    """PS3.10 file bytes: 128-byte preamble (zeros, or `preamble` padded or cut to 128 bytes),
    'DICM', the meta group, then the data set."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    if preamble is not None:
        data = preamble.ljust(128, b"\0")[:128] + data[128:]
    return data
