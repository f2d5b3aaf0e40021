"""Test doubles for the gateway's unit tests: settings files, an IdP with its own test keys and
JWKS served by httpx.MockTransport, DPoP proofs, DICOM files, and a fake archive."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dicomweb_gateway.policy import StudyFacts
from dicomweb_gateway.settings import Settings, parse_settings
from dicomweb_gateway.store import Claim
from joserfc import jws
from joserfc.jwk import ECKey
from ztstack import dicom_objects

PUBLIC_URL = "https://gateway.test:8443"
ISSUER = "https://idp.test:9443/realms/dicomweb"
ARCHIVE_URL = "https://archive.test:8042"


def _self_signed(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def settings_dict(tmp: Path) -> dict[str, Any]:
    (tmp / "pki").mkdir(exist_ok=True)
    (tmp / "secrets").mkdir(exist_ok=True)
    ca = tmp / "pki" / "ca.pem"
    if not ca.exists():
        _self_signed(ca)
    (tmp / "secrets" / "archive-password").write_text("Zr8#kq2LmV9xTq4w!aB7\n")
    return {
        "profile": "demo",
        "public_url": PUBLIC_URL,
        "listen": {"host": "127.0.0.1", "port": 8443},
        "tls": {"cert": str(ca), "key": str(ca.with_suffix(".key"))},
        "workers": 1,
        "run_dir": str(tmp),
        "oidc": {
            "issuer": ISSUER,
            "ca_cert": str(ca),
            "algorithms": ["ES256", "PS256"],
            "leeway_seconds": 30,
            "max_token_lifetime_seconds": 300,
            "jwks_min_refresh_seconds": 30,
        },
        "dpop": {"algorithms": ["ES256", "PS256"], "iat_window_seconds": 60},
        "archive": {
            "kind": "orthanc",
            "url": ARCHIVE_URL,
            "username": "gateway",
            "password_file": str(tmp / "secrets" / "archive-password"),
            "ca_cert": str(ca),
            "timeout_seconds": 5,
        },
        "database_url": f"sqlite:///{tmp}/gateway.db",
        "policy": {"file": str(tmp / "policy.yaml")},
        "audit": {"database_url": f"sqlite:///{tmp}/audit.db"},
        "limits": {
            "qido_max_limit": 100,
            "stow_max_bytes": 1_000_000,
            "requests_per_minute": 6000,
            "preamble_policy": "reject",
        },
        "viewer": {"dist_dir": None},
    }


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    data = settings_dict(tmp)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp / "settings.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_settings(data, path)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ---------------------------------------------------------------- identity provider


@dataclass
class FakeIdp:
    """Mints RFC 9068 tokens with its own key and serves discovery + JWKS."""

    key: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256", {"kid": "k1"}))
    jwks_fetches: int = 0
    down: bool = False

    def transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            if self.down:
                raise httpx.ConnectError("idp down", request=request)
            if request.url.path.endswith("/.well-known/openid-configuration"):
                return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": ISSUER + "/jwks"})
            if request.url.path.endswith("/jwks"):
                self.jwks_fetches += 1
                public = self.key.as_dict(private=False)
                public["kid"] = self.key.kid
                public["use"] = "sig"
                return httpx.Response(200, json={"keys": [public]})
            return httpx.Response(404)

        return httpx.MockTransport(handler)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "user-1",
            "aud": PUBLIC_URL,
            "exp": now + 300,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "client_id": "dicomweb-cli",
            "scope": "openid user/ImagingStudy.rs user/ImagingStudy.c user/ImagingStudy.d",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, header: dict[str, Any] | None = None, key: Any = None, **claims: Any) -> str:
        head = {"alg": "ES256", "typ": "at+jwt", "kid": self.key.kid}
        head.update(header or {})
        head = {k: v for k, v in head.items() if v is not None}
        payload = json.dumps(self.claims(**claims)).encode()
        return jws.serialize_compact(head, payload, key or self.key, algorithms=[head["alg"]])


def dpop_proof(
    key: ECKey, method: str, url: str, token: str | None = None, **overrides: Any
) -> str:
    public = key.as_dict(private=False)
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public}
    header.update(overrides.pop("header", {}))
    claims: dict[str, Any] = {
        "jti": uuid.uuid4().hex,
        "htm": method,
        "htu": url,
        "iat": int(time.time()),
    }
    if token is not None:
        claims["ath"] = b64url(hashlib.sha256(token.encode()).digest())
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jws.serialize_compact(
        header, json.dumps(claims).encode(), key, algorithms=[header["alg"]]
    )


# ---------------------------------------------------------------- DICOM files


def dicom_file(
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    patient_id: str = "ZT-P001",
    preamble: bytes | None = None,
    pixel: bytes = bytes(range(16)),
) -> bytes:
    ds = dicom_objects.instance(
        study=study,
        series=series,
        sop=sop,
        patient_id=patient_id,
        pixels=pixel,
        PatientName="North^Alice",
    )
    return dicom_objects.part10(ds, preamble)


def multipart(parts: list[bytes], boundary: str = "XyZ123") -> tuple[str, bytes]:
    body = b""
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


PE_PREAMBLE = dicom_objects.PE_PREAMBLE


# ---------------------------------------------------------------- archive


def element(vr: str, value: str) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


@dataclass
class FakeArchive:
    """An Orthanc look-alike: knows studies -> series -> instances; records every request."""

    studies: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    handler_override: Callable[[httpx.Request], httpx.Response | None] | None = None
    deleted: list[str] = field(default_factory=list)
    # How the fake reads a stored part: pydicom by default; a test may play another parser.
    reader: Callable[[bytes], pydicom.Dataset] | None = None

    def stow(self, request: httpx.Request) -> dict[str, Any]:
        """Store each part like Orthanc: answer ReferencedSOPSequence items with RetrieveURLs."""
        boundary = request.headers["content-type"].split("boundary=")[1].encode()
        items = []
        for piece in request.content.split(b"--" + boundary)[1:]:
            if piece.startswith(b"--"):
                break
            data = piece.partition(b"\r\n\r\n")[2][:-2]
            ds = (self.reader or (lambda b: pydicom.dcmread(io.BytesIO(b))))(data)
            study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            self.add(study, series, sop, str(ds.get("PatientID", "")))
            url = f"{ARCHIVE_URL}/dicom-web/studies/{study}/series/{series}/instances/{sop}"
            items.append(
                {
                    "00081150": element("UI", str(ds.SOPClassUID)),
                    "00081155": element("UI", sop),
                    "00081190": element("UR", url),
                }
            )
        return {"00081199": {"vr": "SQ", "Value": items}}

    def add(self, study: str, series: str, sop: str, patient: str = "ZT-P001") -> None:
        instances = self.studies.setdefault(study, {}).setdefault(series, [])
        if sop not in instances:
            instances.append(sop)
        self.patients.setdefault(study, patient)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def study_item(self, study: str) -> dict[str, Any]:
        return {
            "0020000D": element("UI", study),
            "00100020": element("LO", self.patients[study]),
            "00081190": element("UR", f"{ARCHIVE_URL}/dicom-web/studies/{study}"),
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.handler_override is not None:
            answer = self.handler_override(request)
            if answer is not None:
                return answer
        path = request.url.path
        params = dict(httpx.QueryParams(request.url.query))
        headers = {"Server": "Orthanc/1.10.1", "X-Orthanc-Version": "1.10.1"}
        if path == "/dicom-web/studies" and request.method == "GET":
            items = [
                self.study_item(s)
                for s in self.studies
                if "StudyInstanceUID" not in params or s in params["StudyInstanceUID"].split(",")
            ]
            return httpx.Response(200, json=items, headers=headers)
        if path == "/dicom-web/series" and request.method == "GET":
            uid = params.get("SeriesInstanceUID")
            items = [
                self.study_item(s) | {"0020000E": element("UI", se)}
                for s, series in self.studies.items()
                for se in series
                if uid is None or se in uid.split(",")
            ]
            return httpx.Response(200, json=items, headers=headers)
        if path == "/dicom-web/instances" and request.method == "GET":
            uid = params.get("SOPInstanceUID")
            items = [
                self.study_item(s) | {"0020000E": element("UI", se), "00080018": element("UI", i)}
                for s, series in self.studies.items()
                for se, instances in series.items()
                for i in instances
                if uid is None or i in uid.split(",")
            ]
            return httpx.Response(200, json=items, headers=headers)
        if path.endswith("/metadata"):
            study = path.split("/")[3]
            body = json.dumps([self.study_item(study)]).encode()
            return httpx.Response(
                200, content=body, headers=headers | {"Content-Type": "application/dicom+json"}
            )
        if path.startswith("/dicom-web/studies") and request.method == "POST":
            return httpx.Response(200, json=self.stow(request), headers=headers)
        if path.startswith("/dicom-web/studies/") and request.method == "GET":
            boundary = "ARCHIVEBOUNDARY"
            body = (
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + dicom_file(preamble=b"\x7fELF")
                + f"\r\n--{boundary}--\r\n".encode()
            )
            return httpx.Response(
                200,
                content=body,
                headers=headers
                | {
                    "Content-Type": f'multipart/related; type="application/dicom"; '
                    f"boundary={boundary}"
                },
            )
        if path == "/tools/lookup":
            uid = request.content.decode()
            hits = []
            for study, series in self.studies.items():
                if uid == study:
                    hits.append({"ID": f"st|{study}", "Type": "Study"})
                for se, instances in series.items():
                    if uid == se:
                        hits.append({"ID": f"se|{study}|{se}", "Type": "Series"})
                    if uid in instances:
                        hits.append({"ID": f"in|{study}|{se}|{uid}", "Type": "Instance"})
            return httpx.Response(200, json=hits)
        if request.method == "GET" and path.startswith(("/studies/st|", "/series/se|")):
            kind, *ids = path.split("/")[2].split("|")
            if kind == "st":
                tags = {"StudyInstanceUID": ids[0]}
                return httpx.Response(
                    200,
                    json={
                        "MainDicomTags": tags,
                        "PatientMainDicomTags": {"PatientID": self.patients.get(ids[0], "")},
                    },
                )
            return httpx.Response(
                200,
                json={
                    "MainDicomTags": {"SeriesInstanceUID": ids[1]},
                    "ParentStudy": f"st|{ids[0]}",
                },
            )
        if request.method == "GET" and path.startswith("/instances/in|"):
            _, study, se, sop = path.split("/")[2].split("|")
            return httpx.Response(
                200,
                json={"StudyInstanceUID": study, "SeriesInstanceUID": se, "SOPInstanceUID": sop},
            )
        if request.method == "DELETE" and "|" in path:
            kind, *ids = path.split("/")[2].split("|")
            self.deleted.append(path)
            if kind == "st":
                self.studies.pop(ids[0], None)
            elif kind == "se":
                self.studies.get(ids[0], {}).pop(ids[1], None)
            else:
                instances = self.studies.get(ids[0], {}).get(ids[1], [])
                if ids[2] in instances:
                    instances.remove(ids[2])
            return httpx.Response(200, json={})
        if request.method == "DELETE":
            return httpx.Response(200, json={})
        if path == "/system":
            return httpx.Response(200, json={"Version": "1.10.1"}, headers=headers)
        return httpx.Response(404, text="Orthanc/1.10.1 unknown resource", headers=headers)


class MemoryIdentities:
    """The policy store's identity part (storage.Identities) in memory, for unit tests."""

    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], Claim] = {}

    async def studies(self, uids: Any) -> dict[str, StudyFacts]:
        return {uid: StudyFacts(uid, known=False) for uid in uids}

    async def claim(self, claims: Any) -> tuple[list[Claim], list[Claim]]:
        wanted = list(claims)
        conflicts = [
            c
            for c in wanted
            if (c.level, c.uid) in self.claims and not c.agrees(self.claims[(c.level, c.uid)])
        ]
        if conflicts:
            return conflicts, []
        new = [c for c in wanted if (c.level, c.uid) not in self.claims]
        self.claims.update({(c.level, c.uid): c for c in new})
        return [], new

    async def recorded(self, keys: Any) -> dict[tuple[str, str], Claim]:
        return {k: self.claims[k] for k in keys if k in self.claims}

    async def release(self, claims: Any) -> None:
        for c in claims:
            self.claims.pop((c.level, c.uid), None)


class IndexDouble:
    """The study-index hooks of `authorize.Authorizer` for authorizer doubles: the index lists
    `indexed` (in that order) and knows no series/instance owner (every look-up is a miss, so
    the archive is asked, as before the index existed)."""

    indexed: tuple[str, ...] = ()
    store: Any

    async def study_facts(self, uids: set[str]) -> Any:
        return await self.store.studies(uids)

    async def permitted_studies(self, ctx: Any, action: Any, uids: Any) -> set[str]:
        raise NotImplementedError

    @staticmethod
    def residual_keys(matches: Any) -> list[tuple[str, str]]:
        from dicomweb_gateway.store.matching import INDEXED_STUDY_KEYS

        return [(k, v) for k, v in matches if k not in INDEXED_STUDY_KEYS]

    async def _matching(self, ctx: Any, action: Any, matches: Any) -> list[str]:
        named = [set(v.split(",")) for k, v in matches if k == "StudyInstanceUID"]
        candidates = [u for u in self.indexed if all(u in n for n in named)]
        allowed = await self.permitted_studies(ctx, action, candidates)
        return [u for u in candidates if u in allowed]

    async def study_page(
        self, ctx: Any, action: Any, matches: Any, fuzzy: bool, limit: int, offset: int
    ) -> list[str]:
        return (await self._matching(ctx, action, matches))[offset : offset + limit]

    async def study_page_versions(
        self, ctx: Any, action: Any, matches: Any, fuzzy: bool, limit: int, offset: int
    ) -> list[tuple[str, str | None]]:
        page = await self.study_page(ctx, action, matches, fuzzy, limit, offset)
        return [(uid, None) for uid in page]

    async def scan_studies(
        self, ctx: Any, action: Any, matches: Any, fuzzy: bool, batch: int = 500
    ) -> Any:
        found = await self._matching(ctx, action, matches)
        for start in range(0, len(found), batch):
            yield found[start : start + batch]

    async def owner(self, level: str, uid: str) -> Claim | None:
        return None

    async def record_locations(self, claims: Any) -> None:
        return None

    async def study_patients(self, uids: Any) -> dict[str, str | None]:
        return {}

    async def on_deleted(self, study: str, series: str | None) -> None:
        return None

    def repair(self, uids: Any) -> None:
        return None


def bare_services(**given: Any) -> Any:
    """A `Services` for a bare FastAPI app in a unit test: what the test gives, None elsewhere."""
    from dicomweb_gateway.services import Services

    fields = dict.fromkeys(
        (
            "settings",
            "archive",
            "authenticator",
            "authorizer",
            "auditor",
            "rate_limiter",
            "rewriter",
            "replay",
        )
    )
    return Services(**(fields | given))
