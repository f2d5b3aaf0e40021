"""Seed the demo data into the archive over its REST API, as the gateway would (idempotent).

Uses the gateway's archive credentials and pinned client certificate. A study already present
(looked up by StudyInstanceUID) is skipped, so a warm `up` sends 8 small lookups and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from . import demo_data, dicom_objects, volume
from .errors import StackError
from .health import tls_context


def seed(
    archive_url: str,
    ca_cert: Path,
    client: tuple[Path, Path],
    username: str,
    password: str,
) -> int:
    """Returns the number of instances uploaded."""
    uploaded = 0
    with httpx.Client(
        base_url=archive_url,
        verify=tls_context(ca_cert, client),
        auth=(username, password),
        timeout=30.0,
    ) as client_:
        for s in demo_data.STUDIES:
            found = client_.post("/tools/lookup", content=s.study_instance_uid)
            found.raise_for_status()
            if any(hit.get("Type") == "Study" for hit in found.json()):
                continue
            for number in range(1, demo_data.SLICES + 1):
                body = dicom_objects.part10(demo_data.instance(s, number))
                r = client_.post(
                    "/instances", content=body, headers={"Content-Type": "application/dicom"}
                )
                if r.status_code != 200:
                    raise StackError(
                        f"seeding {s.key} #{number} failed: HTTP {r.status_code} {r.text[:200]}",
                        "read logs/orthanc.log",
                    )
                uploaded += 1
        uploaded += _seed_volume(client_)
    return uploaded


def _seed_volume(client: httpx.Client) -> int:
    """The real-sized CT study (volume.py): 320 slices of 512x512 and a multi-frame instance,
    generated and uploaded a few at a time (numpy and Orthanc overlap)."""
    from concurrent.futures import ThreadPoolExecutor

    found = client.post("/tools/lookup", content=volume.VOLUME.study_instance_uid)
    found.raise_for_status()
    if any(hit.get("Type") == "Study" for hit in found.json()):
        return 0

    def upload(ds: object) -> None:
        body = dicom_objects.part10(ds)  # type: ignore[arg-type]
        r = client.post("/instances", content=body, headers={"Content-Type": "application/dicom"})
        if r.status_code != 200:
            raise StackError(
                f"seeding the CT volume failed: HTTP {r.status_code} {r.text[:200]}",
                "read logs/orthanc.log",
            )

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(upload, volume.instances()))
    return volume.SLICES + 1
