"""Typed gateway settings: parsed once at start-up, fail closed (STYLE rule 5).

The file format is the contract in docs/internals.md ("Gateway settings file"). Unknown keys are
errors, every problem is reported in one `SettingsError`, secrets come from files (never inline)
and the production profile refuses placeholder or weak secrets.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Secrets that ship in tutorials and default configs; never acceptable in production.
_PLACEHOLDERS = frozenset(
    {
        "",
        "admin",
        "changeme",
        "change-me",
        "changeit",
        "demo",
        "gateway",
        "orthanc",
        "password",
        "placeholder",
        "secret",
        "test",
        "todo",
    }
)
_MIN_SECRET_LENGTH = 16


class SettingsError(Exception):
    """Every problem found in a settings file, one per line."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{path}: {len(problems)} problem(s)\n  " + "\n  ".join(problems))


class Profile(enum.StrEnum):
    DEMO = "demo"
    PRODUCTION = "production"


class PreamblePolicy(enum.StrEnum):
    REJECT = "reject"
    ZERO = "zero"


def _https_origin(value: str) -> str:
    """An https origin without path, query or fragment (it is also the token audience)."""
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("must be an https URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("must be an origin (no path, query, fragment or userinfo)")
    return value.rstrip("/")


def _https_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("must be an https URL")
    if parts.query or parts.fragment or parts.username:
        raise ValueError("must not carry a query, fragment or userinfo")
    return value.rstrip("/")


def _sql_url(value: str) -> str:
    if not value.startswith(("sqlite://", "sqlite+aiosqlite://", "postgresql")):
        raise ValueError("must be a sqlite:// or postgresql:// URL")
    return value


HttpsOrigin = Annotated[str, AfterValidator(_https_origin)]
HttpsUrl = Annotated[str, AfterValidator(_https_url)]
SqlUrl = Annotated[str, AfterValidator(_sql_url)]
PositiveInt = Annotated[int, Field(gt=0)]
Algorithms = Annotated[list[str], Field(min_length=1)]

# Asymmetric JWS algorithms only (RFC 8725 section 3.1): no HS*, no "none".
_ALLOWED_ALGORITHMS = frozenset({"ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"})


def _check_algorithms(value: list[str]) -> list[str]:
    bad = [a for a in value if a not in _ALLOWED_ALGORITHMS]
    if bad:
        raise ValueError(f"not allowed: {bad}; use asymmetric algorithms only")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listen(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8443
    # Behind the edge (nginx): plain HTTP on this Unix socket only, TLS ends at the edge.
    uds: Path | None = None


class Edge(_Section):
    """The data plane in front of the gateway (nginx, docs/gateway.md "The data plane")."""

    secret_file: FilePath  # the edge sends it on every decision subrequest
    decision_ttl_seconds: Annotated[int, Field(ge=0, le=60)] = 10
    access_log: Path | None = None  # the edge's JSON access log, for `edge-audit`


class Deidentification(_Section):
    """De-identified views (DA-1, docs/policy.md): the key of every project's pseudonyms."""

    key_file: FilePath  # generated at `make up` into the run directory, never committed


class Tls(_Section):
    cert: FilePath
    key: FilePath


class Oidc(_Section):
    issuer: HttpsUrl
    ca_cert: FilePath
    algorithms: Annotated[Algorithms, AfterValidator(_check_algorithms)] = ["ES256", "PS256"]
    leeway_seconds: Annotated[int, Field(ge=0, le=120)] = 30
    max_token_lifetime_seconds: Annotated[int, Field(gt=0, le=3600)] = 300
    jwks_min_refresh_seconds: Annotated[int, Field(ge=0)] = 30


class Dpop(_Section):
    algorithms: Annotated[Algorithms, AfterValidator(_check_algorithms)] = ["ES256", "PS256"]
    iat_window_seconds: Annotated[int, Field(gt=0, le=600)] = 60


# Archive adapters (archive/<kind>.py, docs/archives.md): `orthanc` (Orthanc with its REST API)
# and `dicomweb` (any PS3.18 archive: dcm4chee-arc, cloud services; `url` is its service root).
ARCHIVE_KINDS = ("orthanc", "dicomweb")


class Archive(_Section):
    kind: str = "orthanc"
    url: HttpsUrl
    username: str = Field(min_length=1)
    password_file: FilePath
    client_cert: FilePath | None = None
    client_key: FilePath | None = None
    ca_cert: FilePath
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30
    # How long a worker keeps the archive's study-level search answer for a study the study
    # index reports unchanged (search.StudyAnswers); 0 asks the archive on every search.
    answer_ttl_seconds: Annotated[float, Field(ge=0, le=60)] = 10

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in ARCHIVE_KINDS:
            raise ValueError(f"no archive adapter {value!r} (one of {', '.join(ARCHIVE_KINDS)})")
        return value

    @field_validator("password_file")
    @classmethod
    def _strong_secret(cls, value: Path, info: ValidationInfo) -> Path:
        secret = value.read_text(encoding="utf-8").strip()
        if not secret:
            raise ValueError("secret file is empty")
        profile = (info.context or {}).get("profile")
        if profile == Profile.PRODUCTION and (
            secret.lower() in _PLACEHOLDERS or len(secret) < _MIN_SECRET_LENGTH
        ):
            raise ValueError(
                f"placeholder or weak secret (production needs >= {_MIN_SECRET_LENGTH} "
                "random characters)"
            )
        return value

    def password(self) -> str:
        return self.password_file.read_text(encoding="utf-8").strip()


class Policy(_Section):
    file: Path
    ingest_rules_file: Path | None = None
    change_feed_interval_seconds: Annotated[float, Field(gt=0)] = 2
    # The study index's reconciliation pass over the whole archive (docs/policy.md).
    reconcile_interval_seconds: Annotated[float, Field(gt=0)] = 600


class Syslog(_Section):
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 6514
    ca_cert: FilePath
    client_cert: FilePath | None = None
    client_key: FilePath | None = None
    spool_dir: Path


class Audit(_Section):
    database_url: SqlUrl
    source_id: str = "zt-gateway"
    syslog: Syslog | None = None
    # Records that could not be committed (store down or full) wait here, fsynced, and are
    # appended to the chain once it accepts writes again; default <run_dir>/audit-spill/<id of
    # the audit store>. Replicas may share one only when they share the audit store.
    spill_dir: Path | None = None


class DatabasePool(_Section):
    """PostgreSQL connection pool and timeouts of every store (store/engines.py)."""

    size: Annotated[int, Field(ge=1, le=100)] = 5
    max_overflow: Annotated[int, Field(ge=0, le=100)] = 10
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    connect_timeout_seconds: Annotated[int, Field(ge=1, le=60)] = 3
    statement_timeout_seconds: Annotated[int, Field(ge=1, le=600)] = 15
    lock_timeout_seconds: Annotated[int, Field(ge=1, le=600)] = 10

    def options(self) -> Any:
        from .store.engines import PoolOptions

        return PoolOptions(
            size=self.size,
            max_overflow=self.max_overflow,
            timeout_seconds=self.timeout_seconds,
            connect_timeout_seconds=self.connect_timeout_seconds,
            statement_timeout_seconds=self.statement_timeout_seconds,
            lock_timeout_seconds=self.lock_timeout_seconds,
        )


class Limits(_Section):
    qido_max_limit: Annotated[int, Field(gt=0, le=100000)] = 1000
    stow_max_bytes: PositiveInt = 512 * 1024 * 1024
    # Body cap of every other route (admin, audit, anything): enforced before authentication.
    max_body_bytes: PositiveInt = 1024 * 1024
    requests_per_minute: PositiveInt = 3000
    preamble_policy: PreamblePolicy = PreamblePolicy.REJECT


_AE_TITLE = r"^[ -~]{1,16}$"  # PS3.5 table 6.2-1 AE: 16 characters of the default repertoire


class DimseDevice(_Section):
    """A registered DICOM device: its AE title, address and pinned TLS client certificate."""

    name: str = Field(min_length=1, max_length=64)
    ae_title: str = Field(pattern=_AE_TITLE)
    host: str = Field(min_length=1)
    certificate: FilePath
    client_id: str | None = None  # the policy's client (defaults to `name`)
    scopes: list[str] = ["system/ImagingStudy.c"]


class LegacyDevice(_Section):
    """A modality that cannot speak DICOM TLS, behind a TLS bridge in its own segment (DV-2).

    The bridge listens on `listen_host:listen_port` for plain DIMSE from exactly `host` with
    calling AE title `ae_title`, and forwards to the front door over DICOM TLS with its own
    pinned certificate; the door registers that certificate as device `bridge-<name>` with the
    same AE title, connecting from `source_host`.
    """

    name: str = Field(min_length=1, max_length=56, pattern=r"^[a-z0-9][a-z0-9-]*$")
    ae_title: str = Field(pattern=_AE_TITLE)
    host: str = Field(min_length=1)  # the legacy modality's one address
    listen_host: str = Field(min_length=1)
    listen_port: Annotated[int, Field(ge=1, le=65535)]
    bridge_ae_title: str = Field(default="ZTBRIDGE", pattern=_AE_TITLE)
    certificate: FilePath  # the bridge's pinned client certificate towards the door
    key: FilePath
    ca_cert: FilePath  # trust anchor for the door's server certificate
    source_host: str = "127.0.0.1"  # where the door sees the bridge connect from
    door_host: str | None = None  # default: dimse.host
    client_id: str | None = None
    scopes: list[str] = ["system/ImagingStudy.c"]

    @property
    def device_name(self) -> str:
        return f"bridge-{self.name}"

    def as_device(self) -> DimseDevice:
        return DimseDevice(
            name=self.device_name,
            ae_title=self.ae_title,
            host=self.source_host,
            certificate=self.certificate,
            client_id=self.client_id or self.device_name,
            scopes=self.scopes,
        )


class Dimse(_Section):
    """The DIMSE front door (DV-4): the only DICOM listener; the archive gets STOW-RS."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 11112
    ae_title: str = Field(default="ZTGATEWAY", pattern=_AE_TITLE)
    devices: list[DimseDevice] = []
    legacy: list[LegacyDevice] = []
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 60

    @field_validator("devices")
    @classmethod
    def _unique(cls, value: list[DimseDevice]) -> list[DimseDevice]:
        titles = [d.ae_title.strip() for d in value]
        if len(set(titles)) != len(titles):
            raise ValueError("two devices share an AE title")
        return value

    @model_validator(mode="after")
    def _unique_with_legacy(self) -> Dimse:
        titles = [d.ae_title.strip() for d in self.all_devices()]
        names = [d.name for d in self.all_devices()]
        if len(set(titles)) != len(titles) or len(set(names)) != len(names):
            raise ValueError("devices and legacy devices must have distinct AE titles and names")
        return self

    def all_devices(self) -> list[DimseDevice]:
        """Every device the door admits: registered devices and the legacy devices' bridges."""
        return [*self.devices, *(legacy.as_device() for legacy in self.legacy)]

    def legacy_device(self, name: str) -> LegacyDevice | None:
        return next((d for d in self.legacy if d.name == name), None)


class Viewer(_Section):
    dist_dir: Path | None = None
    config_template: Path | None = None


class Settings(_Section):
    profile: Profile = Profile.DEMO
    public_url: HttpsOrigin
    listen: Listen = Listen()
    tls: Tls
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    run_dir: Path
    oidc: Oidc
    dpop: Dpop = Dpop()
    archive: Archive
    database_url: SqlUrl
    database_pool: DatabasePool = DatabasePool()
    policy: Policy
    audit: Audit
    limits: Limits = Limits()
    viewer: Viewer = Viewer()
    dimse: Dimse | None = None
    edge: Edge | None = None
    deidentification: Deidentification | None = None  # DA-1; without it no view is served

    @property
    def dicomweb_base(self) -> str:
        return self.public_url + "/dicom-web"


def _format(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: required"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def parse_settings(raw: object, source: str | Path = "<settings>") -> Settings:
    """Validate an already-loaded mapping; every problem goes into one SettingsError."""
    if not isinstance(raw, dict):
        raise SettingsError(source, ["the file must hold a mapping of settings"])
    profile = raw.get("profile", Profile.DEMO)
    try:
        return Settings.model_validate(raw, context={"profile": profile})
    except ValidationError as exc:
        problems = [_format(dict(e)) for e in exc.errors()]
        raise SettingsError(source, problems) from None


def load_settings(path: str | Path) -> Settings:
    """Read and validate a settings YAML file (docs/internals.md)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(path, [f"cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise SettingsError(path, [f"not valid YAML: {exc}"]) from None
    return parse_settings(raw, path)
