"""A tiny fake of Orthanc's REST API (/changes, /tools/lookup, tags) for policy-store tests."""

from __future__ import annotations

import json
from typing import Any

import httpx
from dicomweb_gateway.archive.client import ArchiveClient
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

    def remove_study(self, orthanc_id: str) -> None:
        del self.studies[orthanc_id]
        self.changes.append(
            {
                "Seq": len(self.changes) + 1,
                "ChangeType": "Deleted",
                "ResourceType": "Study",
                "ID": orthanc_id,
                "Path": f"/studies/{orthanc_id}",
            }
        )

    def expanded(self, oid: str) -> dict[str, Any]:
        tags = self.studies[oid]
        patient = {k: tags[k] for k in ("PatientID", "PatientName") if k in tags}
        main = {k: v for k, v in tags.items() if k not in patient and k != "Modality"}
        return {
            "ID": oid,
            "Type": "Study",
            "LastUpdate": tags.get("LastUpdate", "20260101T000000"),
            "MainDicomTags": main,
            "PatientMainDicomTags": patient,
            "Series": [f"se-{oid}"],
        }

    def find(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        wanted = set(body["Query"]["StudyInstanceUID"].split("\\"))
        out = []
        for oid, tags in self.studies.items():
            if tags.get("StudyInstanceUID") not in wanted:
                continue
            uid = tags["StudyInstanceUID"]
            if body["Level"] == "Series":
                out.append(
                    {
                        "ID": f"se-{oid}",
                        "ParentStudy": oid,
                        "Instances": [f"i-{oid}"],
                        "MainDicomTags": {
                            "SeriesInstanceUID": uid + ".1",
                            "Modality": tags.get("Modality", "CT"),
                        },
                    }
                )
            else:
                out.append(
                    {
                        "ID": f"i-{oid}",
                        "ParentSeries": f"se-{oid}",
                        "MainDicomTags": {"SOPInstanceUID": uid + ".1.1"},
                    }
                )
        return out

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
        if path == "/tools/find":
            return httpx.Response(200, json=self.find(json.loads(request.content)))
        if path == "/statistics":
            return httpx.Response(200, json={"CountStudies": len(self.studies)})
        if path == "/studies":
            since = int(request.url.params.get("since", 0))
            limit = int(request.url.params.get("limit", 1000))
            ids = list(self.studies)[since : since + limit]
            return httpx.Response(200, json=[self.expanded(i) for i in ids])
        parts = path.strip("/").split("/")
        if parts[0] == "studies" and len(parts) == 2:
            if parts[1] not in self.studies:
                return httpx.Response(404)
            return httpx.Response(200, json=self.expanded(parts[1]))
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
            ArchiveClient(
                "https://archive.invalid",
                "gateway",
                "secret",
                verify=False,
                transport=httpx.MockTransport(self.handler),
            ),
            "https://gateway.invalid",
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
