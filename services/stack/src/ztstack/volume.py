"""A real-sized CT study for the demo and the benchmark (issue 13).

320 axial slices of 512x512, 16-bit (12 bits stored, intercept -1024), 0.5 mm pixels and
0.6 mm slices, of the 3D Shepp-Logan head phantom (Kak & Slaney; the 3D extension of Schabel)
mapped to Hounsfield units: air, a bone skull, brain, CSF ventricles and small dense lesions,
so a CT window shows anatomy and OHIF's MPR shows a coherent head in all three planes (one
Frame of Reference, positions and orientation on every slice). A second series holds one
multi-frame instance (Multi-frame Grayscale Word Secondary Capture, 64 frames of the same
volume) for the frame-batch benchmarks. Deterministic: every UID derives from fixed entropy.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from . import dicom_objects
from .demo_data import ALICE, Study, study_attributes

SIZE = 512
SLICES = 320
PIXEL_MM = 0.5
SLICE_MM = 0.6
FRAMES = 64
MULTIFRAME_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC

VOLUME = Study("p001-ct-head-volume", ALICE, "CT", "HEAD", "CT head volume", "ZT-A0009")

# (value, semi-axes a b c, centre x0 y0 z0, rotation about z in degrees): the 3D Shepp-Logan
# ellipsoids in normalised coordinates [-1, 1]^3.
ELLIPSOIDS = [
    (2.00, 0.6900, 0.920, 0.810, 0.00, 0.0000, 0.00, 0),
    (-0.98, 0.6624, 0.874, 0.780, 0.00, -0.0184, 0.00, 0),
    (-0.02, 0.1100, 0.310, 0.220, 0.22, 0.0000, 0.00, -18),
    (-0.02, 0.1600, 0.410, 0.280, -0.22, 0.0000, 0.00, 18),
    (0.01, 0.2100, 0.250, 0.410, 0.00, 0.3500, -0.15, 0),
    (0.01, 0.0460, 0.046, 0.050, 0.00, 0.1000, 0.25, 0),
    (0.01, 0.0460, 0.046, 0.050, 0.00, -0.1000, 0.25, 0),
    (0.01, 0.0460, 0.023, 0.050, -0.08, -0.6050, 0.00, 0),
    (0.01, 0.0230, 0.023, 0.020, 0.00, -0.6060, 0.00, 0),
    (0.01, 0.0230, 0.046, 0.020, 0.06, -0.6050, 0.00, 0),
]
_Y, _X = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]


def _uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=["zt-volume", *parts])


def hounsfield(slice_index: int) -> np.ndarray:
    """One axial slice in HU (float)."""
    z = (slice_index - (SLICES - 1) / 2) / (SLICES / 2)
    density = np.zeros((SIZE, SIZE))
    inside: list[np.ndarray] = []
    for value, a, b, c, x0, y0, z0, phi in ELLIPSOIDS:
        t = np.radians(phi)
        xr = (_X - x0) * np.cos(t) + (_Y - y0) * np.sin(t)
        yr = -(_X - x0) * np.sin(t) + (_Y - y0) * np.cos(t)
        mask = (xr / a) ** 2 + (yr / b) ** 2 + ((z - z0) / c) ** 2 <= 1
        density[mask] += value
        inside.append(mask)
    hu = np.full((SIZE, SIZE), -1000.0)  # air
    head, brain = inside[0], inside[1]
    hu[head] = 1100.0  # skull
    hu[brain] = 35.0  # brain parenchyma
    hu[inside[2] | inside[3]] = 5.0  # ventricles (CSF)
    for lesion in inside[4:]:
        hu[lesion & brain] = 70.0  # denser lesions
    rng = np.random.default_rng(slice_index)
    hu[head] += 6.0 * rng.standard_normal(int(head.sum()))  # scanner noise
    return hu


def stored(slice_index: int) -> np.ndarray:
    """Stored values: unsigned 12-bit, HU + 1024 (RescaleIntercept -1024)."""
    values: np.ndarray = np.clip(hounsfield(slice_index) + 1024, 0, 4095).astype(np.uint16)
    return values


def _image(
    sop_class: str, sop: str, series: str, number: int, description: str, pixels: bytes
) -> Dataset:
    s = VOLUME
    ds = dicom_objects.instance(
        study=s.study_instance_uid,
        series=series,
        sop=sop,
        patient_id=s.patient.patient_id,
        sop_class=sop_class,
        modality="CT",
        rows=SIZE,
        bits=16,
        pixels=pixels,
        **study_attributes(s),
    )
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.SeriesDescription = description
    ds.StudyID = "VOLUME"
    ds.InstanceNumber = number
    ds.FrameOfReferenceUID = _uid("frame-of-reference")
    ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = ["40", "600"], ["80", "2800"]  # brain, bone
    return ds


def axial(number: int) -> Dataset:
    """Slice `number` (1..SLICES), head first from the top: a CT Image IOD subset."""
    # The demo data's UID conventions (Study.series_instance_uid, sop_instance_uid), so tests
    # address this study like every other demo study.
    ds = _image(
        CTImageStorage,
        VOLUME.sop_instance_uid(number),
        VOLUME.series_instance_uid,
        number,
        "CT head axial 0.6 mm",
        stored(number - 1).tobytes(),
    )
    ds.SeriesNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = "120"
    ds.SliceThickness = str(SLICE_MM)
    z = -SLICE_MM * (number - 1)
    ds.ImagePositionPatient = [-SIZE * PIXEL_MM / 2, -SIZE * PIXEL_MM / 2, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = z
    ds.PositionReferenceIndicator = ""
    return ds


def multiframe() -> Dataset:
    """One instance of FRAMES frames (every fifth slice) for frame-batch retrieval."""
    ds = _image(
        MULTIFRAME_SOP_CLASS,
        _uid("multiframe"),
        _uid("series", "multiframe"),
        1,
        "CT head multi-frame",
        b"".join(stored(5 * i).tobytes() for i in range(FRAMES)),
    )
    ds.SeriesNumber = 2
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD"
    ds.NumberOfFrames = FRAMES
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = "100"
    return ds


def instances() -> Iterator[Dataset]:
    for number in range(1, SLICES + 1):
        yield axial(number)
    yield multiframe()
