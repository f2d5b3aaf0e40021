"""Shared helpers for the policy, criteria and store unit tests (not a test module)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import yaml
from dicomweb_gateway.context import Principal
from dicomweb_gateway.policy import Policy, StudyFacts, parse_policy

REPO = Path(__file__).resolve().parents[3]
DEMO_POLICY = REPO / "config" / "policy.yaml"
DEMO_INGEST_RULES = REPO / "config" / "ingest-rules.yaml"
NOW = 1_800_000_000.0

NORTH = StudyFacts("1.2.826.0.1.1", "ZT-P001", frozenset({"site:north"}))
SOUTH = StudyFacts("1.2.826.0.1.2", "ZT-P002", frozenset({"site:south"}))
LEGAL_HOLD = StudyFacts("1.2.826.0.1.3", "ZT-P002", frozenset({"site:south", "legal-hold"}))
TRIAL = StudyFacts("1.2.826.0.1.4", "ZT-P003", frozenset({"site:north", "research:trial-42"}))
VIP = StudyFacts("1.2.826.0.1.5", "ZT-P004", frozenset({"site:north", "vip"}))
UNLABELLED = StudyFacts("1.2.826.0.1.6", "ZT-P009", frozenset())
UNKNOWN = StudyFacts("1.2.826.0.1.7", known=False)


def policy_from(text: str) -> Policy:
    return parse_policy(yaml.safe_load(textwrap.dedent(text)), "test")


def principal(
    scopes: str = "user/ImagingStudy.rs",
    roles: str = "",
    groups: str = "",
    client_id: str = "ohif-viewer",
    patient: str | None = None,
    acr: str | None = "urn:zt:acr:pwd",
    auth_age: float | None = 10,
    subject: str = "someone",
) -> Principal:
    return Principal(
        subject=subject,
        issuer="https://localhost:9443/realms/dicomweb",
        client_id=client_id,
        scopes=frozenset(scopes.split()),
        roles=frozenset(roles.split()),
        groups=frozenset(groups.split()),
        patient=patient,
        acr=acr,
        auth_time=None if auth_age is None else int(NOW - auth_age),
        issued_at=int(time.time()),
    )
