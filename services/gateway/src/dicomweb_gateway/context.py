"""The request context: each step of the data flow reads and writes this one object.

parse -> authenticate -> authorize -> forward -> filter/rewrite -> respond, audit at the end
(STYLE rule 6). Audit reads the context and never changes a decision; but recording is part of
answering, so an answer whose record cannot be stored is withheld (503, fail closed).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Action(enum.StrEnum):
    """What a request does to a study, as the policy sees it."""

    SEARCH = "search"  # QIDO-RS
    READ = "read"  # WADO-RS, WADO-URI, rendered, thumbnails
    STORE = "store"  # STOW-RS
    DELETE = "delete"  # DELETE of a study or series
    BREAK_GLASS = "break_glass"  # emergency access grant
    ADMIN = "admin"  # label / policy changes
    AUDIT_READ = "audit_read"  # GET /audit


class SecurityEvent(enum.StrEnum):
    """Why a refusal is a security event (DICOM PS3.15 A.5.3.11 Security Alert): set by the
    error that refused the request (errors.py), read by the audit (audit/messages.py)."""

    AUTHENTICATION = "authentication"  # no, or an invalid, access token (Node Authentication)
    DPOP = "dpop"  # an invalid DPoP proof (Node Authentication)
    STEP_UP = "step_up"  # a stronger or fresher login is needed (Use of Restricted Function)


@dataclass(frozen=True)
class Principal:
    """Who is calling, from a validated RFC 9068 access token."""

    subject: str
    issuer: str
    client_id: str
    scopes: frozenset[str]
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    patient: str | None = None
    acr: str | None = None
    amr: tuple[str, ...] = ()
    auth_time: int | None = None
    jti: str = ""
    audience: tuple[str, ...] = ()
    dpop_jkt: str | None = None  # cnf.jkt when the token is DPoP-bound
    issued_at: int = 0
    expires_at: int = 0

    @property
    def study_scopes(self) -> frozenset[str]:
        """StudyInstanceUIDs named by `study:<uid>` scopes (empty: not narrowed)."""
        return frozenset(s[len("study:") :] for s in self.scopes if s.startswith("study:"))


@dataclass(frozen=True)
class StudyRef:
    """A study a request touched, for audit participant objects."""

    study_instance_uid: str
    patient_id: str | None = None
    sop_class_uids: tuple[str, ...] = ()
    number_of_instances: int | None = None


@dataclass
class Decision:
    """The policy's answer. `reasons` are paired criterion reasons (`role-ok`, ...)."""

    allow: bool
    reasons: tuple[str, ...] = ()
    # Set when the only thing missing is a stronger or fresher login (RFC 9470).
    acr_values: str | None = None
    max_age: int | None = None
    # DA-1: set when the allowing rules grant only a de-identified view (policy `view`).
    deidentified_project: str | None = None
    allow_secondary_capture: bool = False


@dataclass
class RequestContext:
    request_id: str
    method: str
    path: str
    client_ip: str
    query: str = ""
    transaction: str | None = None  # PS3.18 transaction name, e.g. "search_for_studies"
    action: Action | None = None
    principal: Principal | None = None
    decisions: list[Decision] = field(default_factory=list)
    studies: list[StudyRef] = field(default_factory=list)
    status: int | None = None
    error_code: str | None = None
    error_detail: str | None = None
    security_event: SecurityEvent | None = None  # the refusal's kind, from its GatewayError
    # Security events for audit (VA-4): e.g. ("preamble", "PE header in part 2").
    alerts: list[tuple[str, str]] = field(default_factory=list)
    forwarded: bool = False  # did anything reach the archive
    extra: dict[str, object] = field(default_factory=dict)

    def add_study(self, ref: StudyRef) -> None:
        if all(s.study_instance_uid != ref.study_instance_uid for s in self.studies):
            self.studies.append(ref)
