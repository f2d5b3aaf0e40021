"""A tiny fake of Orthanc's REST API (/changes, /tools/lookup, tags) for policy-store tests."""

from __future__ import annotations

import json
from typing import Any

import httpx
from dicomweb_gateway.archive.orthanc import OrthancArchive


class FakeOrthanc:
    def __init__(self) -> None:
        self.studies: dict[str, dict[str, Any]] = {}  # orthanc id -> instance tags
        self.changes: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.fail = False

    def add_study(self, orthanc_id: str, tags: dict[str, Any], change: str = "NewStudy") -> None:
        self.studies[orthanc_id] = tags
        self.changes.append(
            {
                "Seq": len(self.changes) + 1,
                "ChangeType": change,
                "ResourceType": "Study",
                "ID": orthanc_id,
                "Path": f"/studies/{orthanc_id}",
            }
        )

    def add_other_change(self, change: str, resource: str) -> None:
        self.changes.append(
            {
                "Seq": len(self.changes) + 1,
                "ChangeType": change,
                "ResourceType": resource,
                "ID": "x",
                "Path": "/x",
            }
        )

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}?{request.url.query.decode()}")
        if self.fail:
            return httpx.Response(500)
        path = request.url.path
        if path == "/changes":
            since = int(request.url.params["since"])
            limit = int(request.url.params["limit"])
            after = [c for c in self.changes if c["Seq"] > since]
            page = after[:limit]
            last = page[-1]["Seq"] if page else since
            return httpx.Response(
                200, json={"Changes": page, "Done": len(after) <= limit, "Last": last}
            )
        if path == "/tools/lookup":
            uid = request.content.decode()
            hits = [
                {"ID": oid, "Type": "Study", "Path": f"/studies/{oid}"}
                for oid, tags in self.studies.items()
                if tags.get("StudyInstanceUID") == uid
            ]
            return httpx.Response(200, content=json.dumps(hits))
        parts = path.strip("/").split("/")
        if parts[0] == "studies" and parts[-1] == "instances":
            if parts[1] not in self.studies:
                return httpx.Response(404)
            return httpx.Response(200, json=[{"ID": f"i-{parts[1]}"}])
        if parts[0] == "instances" and parts[-1] == "simplified-tags":
            oid = parts[1].removeprefix("i-")
            if oid not in self.studies:
                return httpx.Response(404)
            return httpx.Response(200, json=self.studies[oid])
        return httpx.Response(404)

    def archive(self) -> OrthancArchive:
        return OrthancArchive(
            "https://archive.invalid",
            "https://gateway.invalid",
            "gateway",
            "secret",
            verify=False,
            transport=httpx.MockTransport(self.handler),
        )


NORTH_CT = {
    "StudyInstanceUID": "1.2.826.0.1.3680043.10.1.1",
    "PatientID": "ZT-P001",
    "InstitutionName": "North General Hospital",
    "AccessionNumber": "ZT-A-0001",
}
SOUTH_MR_HOLD = {
    "StudyInstanceUID": "1.2.826.0.1.3680043.10.1.2",
    "PatientID": "ZT-P002",
    "InstitutionName": "South Valley Clinic",
    "AccessionNumber": "ZT-LH-0001",
}
VIP_CT = {
    "StudyInstanceUID": "1.2.826.0.1.3680043.10.1.3",
    "PatientID": "ZT-P004",
    "InstitutionName": "North General Hospital",
}
