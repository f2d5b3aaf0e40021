"""AP-7: the strict reader (part10.py) against hostile files, and pydicom against DCMTK.

The differential property: a file the gateway accepts is read by DCMTK's `dcmdump` (the parser
inside Orthanc) with the same Study, Series and SOP Instance UIDs and PatientID, both as sent
and as re-serialized for the archive. Hostile files are valid files mutated by hypothesis:
duplicated identifying elements, swapped elements, changed VRs, inserted elements, overwritten
bytes, truncation.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from dicomweb_gateway.part10 import Anomaly, read_instance
from gateway_fakes import dicom_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.control("AP-7")

DCMDUMP = shutil.which("dcmdump")
KEYS = {
    "(0020,000d)": "StudyInstanceUID",
    "(0020,000e)": "SeriesInstanceUID",
    "(0008,0018)": "SOPInstanceUID",
    "(0010,0020)": "PatientID",
}
IDENTIFYING_TAGS = [0x0020000D, 0x0020000E, 0x00080018, 0x00100020]
BASE = dicom_file(
    study="1.2.826.0.5.1", series="1.2.826.0.5.1.1", sop="1.2.826.0.5.1.1.1", patient_id="P-5"
)
STATS = {"examples": 0, "accepted": 0}


def dataset_offsets(data: bytes) -> list[int]:
    """Start offsets of the top-level dataset elements (explicit VR little endian)."""
    pos, offsets = 132, []
    while pos < len(data):
        group = struct.unpack_from("<H", data, pos)[0]
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
            length, header = struct.unpack_from("<I", data, pos + 8)[0], 12
        else:
            length, header = struct.unpack_from("<H", data, pos + 6)[0], 8
        if group != 0x0002:
            offsets.append(pos)
        pos += header + length
    return offsets


OFFSETS = dataset_offsets(BASE)


def short_element(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


uids = st.from_regex(r"\A[1-9][0-9]{0,3}(\.[1-9][0-9]{0,3}){1,5}\Z", fullmatch=True)
texts = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=12
)


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    data = BASE
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["duplicate", "swap", "vr", "insert", "bytes", "truncate"]))
        if len(data) < 140 and kind in ("bytes", "truncate"):
            continue
        try:
            offsets = dataset_offsets(data)
        except struct.error:
            offsets = OFFSETS
        offsets = [o for o in offsets if o < len(data)] or OFFSETS
        at = draw(st.sampled_from(offsets))
        if kind == "duplicate":
            tag = draw(st.sampled_from(IDENTIFYING_TAGS))
            vr = b"LO" if tag == 0x00100020 else b"UI"
            value = (draw(texts) if vr == b"LO" else draw(uids)).encode()
            data = data[:at] + short_element(tag, vr, value) + data[at:]
        elif kind == "swap":
            index = offsets.index(at)
            if index + 2 < len(offsets):
                a, b, c = offsets[index], offsets[index + 1], offsets[index + 2]
                data = data[:a] + data[b:c] + data[a:b] + data[c:]
        elif kind == "vr":
            vr = draw(st.sampled_from([b"UN", b"OB", b"LO", b"SH", b"UI", b"CS", b"ZZ"]))
            data = data[: at + 4] + vr + data[at + 6 :]
        elif kind == "insert":
            tag = draw(st.integers(0x00080000, 0x7FE0FFFF))
            vr = draw(st.sampled_from([b"LO", b"UI", b"CS", b"SH"]))
            data = data[:at] + short_element(tag, vr, draw(texts).encode()) + data[at:]
        elif kind == "bytes":
            where = draw(st.integers(132, len(data) - 1))
            junk = draw(st.binary(min_size=1, max_size=8))
            data = data[:where] + junk + data[where + len(junk) :]
        else:
            data = data[: draw(st.integers(132, len(data) - 1))]
    return data


def dcmtk_reads(path: Path) -> dict[str, str] | None:
    """The identifying values as DCMTK reads them (top level only); None if it cannot."""
    assert DCMDUMP is not None, "dcmdump missing: `make bootstrap` installs Debian's dcmtk"
    done = subprocess.run(
        [DCMDUMP, "-q", "-M", "+E", str(path)],
        capture_output=True,
        encoding="latin-1",
        check=False,
    )
    if done.returncode != 0:
        return None
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key = KEYS.get(line[:11].lower())
        if key is None or key in found:
            continue
        start, end = line.find("["), line.find("]")
        found[key] = line[start + 1 : end].strip() if 0 <= start < end else ""
    found.setdefault("PatientID", "")
    return found


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=hostile())
def test_accepted_files_read_the_same_in_dcmtk(data: bytes, tmp_path: Path) -> None:
    STATS["examples"] += 1
    try:
        instance = read_instance(data)
    except Anomaly:
        return
    STATS["accepted"] += 1
    ours = {
        "StudyInstanceUID": instance.study_instance_uid,
        "SeriesInstanceUID": instance.series_instance_uid,
        "SOPInstanceUID": instance.sop_instance_uid,
        "PatientID": instance.patient_id,
    }
    for name, blob in (("sent.dcm", data), ("canonical.dcm", instance.canonical)):
        path = tmp_path / name
        path.write_bytes(blob)
        theirs = dcmtk_reads(path)
        if name == "canonical.dcm":
            assert theirs == ours, f"DCMTK reads the forwarded file differently: {theirs}"
        else:
            assert theirs is None or theirs == ours, f"accepted a differential: {theirs}"


def test_the_differential_found_disagreements_to_refuse() -> None:
    """The mutations are not all harmless: the seed corpus holds known differentials."""
    hostile_first = short_element(0x0020000D, b"UI", b"1.2.3.4")
    at = BASE.find(struct.pack("<HH", 0x0020, 0x000D) + b"UI")
    duplicate = BASE[:at] + hostile_first + BASE[at:]
    with pytest.raises(Anomaly, match="repeated or out of order"):
        read_instance(duplicate)
    assert read_instance(BASE).canonical[132:] == BASE[132:]


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda d: d[:-3], "overruns|truncated|trailing"),
        (lambda d: d[:132] + d[132:].replace(b"UI", b"ZZ", 1), "unknown VR"),
        (lambda d: d[:128] + b"DICX" + d[132:], "no PS3.10 file header"),
    ],
)
def test_anomalies_are_named(mutation: object, message: str) -> None:
    assert callable(mutation)
    with pytest.raises(Anomaly, match=message):
        read_instance(mutation(BASE))


def test_nesting_bomb_is_refused() -> None:
    """Sequences nested beyond MAX_DEPTH (undefined lengths) are refused, not recursed."""
    item = b""
    for _ in range(40):
        sq = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF)
        inner = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + item
        inner += struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        item = sq + inner + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    at = BASE.find(struct.pack("<HH", 0x7FE0, 0x0010))
    with pytest.raises(Anomaly):
        read_instance(BASE[:at] + item + BASE[at:])


def teardown_module() -> None:
    # The closing note quotes these: how many hostile files ran and how many were accepted.
    print(f"\npart10 differential: {STATS['examples']} examples, {STATS['accepted']} accepted")
