"""The policy compiled to SQL selects exactly the studies decide() allows (AP-1, issue 12).

Hypothesis draws random policies (allow/deny rules over every criterion, `unless` blocks,
step-up requirements), random callers (scopes incl. `patient/` and `study:` narrowing, roles,
groups, clients, patient claim, acr, login age), random studies (patient, labels), break-glass
grants and actions, and compares the rows the SQL predicate selects with decide(), study by
study.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from dicomweb_gateway.context import Action, Principal
from dicomweb_gateway.policy import Policy, StudyFacts, decide
from dicomweb_gateway.policy.model import Criteria, Rule, StepUp
from dicomweb_gateway.store.models import Base, Study, StudyLabel
from dicomweb_gateway.store.predicate import NotCompilable, as_clause, compile_policy
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

LABELS = ("site:north", "site:south", "vip", "legal-hold", "restricted")
ROLES = ("clinician", "radiologist", "vip-access", "patient")
GROUPS = ("/site-north", "/site-south")
CLIENTS = ("ohif-viewer", "ai-node")
SCOPES = (
    "user/ImagingStudy.rs",
    "patient/ImagingStudy.rs",
    "system/ImagingStudy.rs",
    "user/ImagingStudy.c",
    "user/ImagingStudy.d",
)
ACR = ("urn:zt:acr:pwd", "urn:zt:acr:mfa", "urn:zt:acr:phr")
UIDS = tuple(f"1.2.826.0.1.{n}" for n in range(1, 9))
PATIENTS = ("ZT-P001", "ZT-P002", "")
NOW = 1_800_000_000.0


def _opt(strategy: st.SearchStrategy) -> st.SearchStrategy:  # type: ignore[type-arg]
    return st.none() | strategy


def _subset(values: tuple[str, ...]) -> st.SearchStrategy:  # type: ignore[type-arg]
    return st.lists(st.sampled_from(values), max_size=len(values), unique=True).map(tuple)


CRITERION_VALUES = {
    "actions": st.lists(st.sampled_from(list(Action)), min_size=1, max_size=3).map(tuple),
    "scopes": _subset(SCOPES),
    "roles": _subset(ROLES),
    "groups": _subset(GROUPS),
    "clients": _subset(CLIENTS),
    "labels_any": _subset(LABELS),
    "labels_all": _subset(LABELS),
    "labels_none": _subset(LABELS),
    "unlabelled": st.booleans(),
    "patient": st.just("own"),
    "break_glass": st.booleans(),
    "study_known": st.booleans(),
}


@st.composite
def criteria(draw: st.DrawFn) -> dict[str, object]:
    """A few criteria (the study-reading ones more often), so that rules do match."""
    keys = draw(
        st.lists(
            st.sampled_from(
                [*CRITERION_VALUES, "labels_any", "labels_none", "patient", "break_glass"]
            ),
            max_size=2,
            unique=True,
        )
    )
    return {k: draw(CRITERION_VALUES[k]) for k in keys}


CRITERIA = criteria()


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    rules = []
    for n in range(draw(st.integers(0, 5))):
        unless = tuple(Criteria(**c) for c in draw(st.lists(CRITERIA, max_size=2)))
        rules.append(
            Rule(
                id=f"rule-{n}",
                effect=draw(st.sampled_from(["allow", "allow", "deny"])),
                unless=unless,
                **draw(CRITERIA),
            )
        )
    step_up = [
        StepUp(
            id=f"step-{n}",
            acr=draw(_opt(st.sampled_from(ACR))),
            max_age=draw(_opt(st.sampled_from([0, 60, 300]))),
            **draw(CRITERIA),
        )
        for n in range(draw(st.integers(0, 2)))
        if draw(st.booleans())
    ]
    return Policy(
        version=1, labels=LABELS, acr_levels=ACR, rules=tuple(rules), step_up=tuple(step_up)
    )


@st.composite
def principals(draw: st.DrawFn) -> Principal:
    scopes = set(draw(_subset(SCOPES)))
    if draw(st.integers(0, 4)):  # mostly a caller who may search at all
        scopes.add(draw(st.sampled_from(["user/ImagingStudy.rs", "patient/ImagingStudy.rs"])))
    if not draw(st.integers(0, 3)):
        scopes |= {f"study:{u}" for u in draw(st.lists(st.sampled_from(UIDS), max_size=3))}
    return Principal(
        subject="someone",
        issuer="https://idp.test",
        client_id=draw(st.sampled_from(CLIENTS)),
        scopes=frozenset(scopes),
        roles=frozenset(draw(_subset(ROLES))),
        groups=frozenset(draw(_subset(GROUPS))),
        patient=draw(st.sampled_from((None, "", *PATIENTS[:2]))),
        acr=draw(_opt(st.sampled_from((*ACR, "urn:unknown")))),
        auth_time=draw(_opt(st.sampled_from([int(NOW) - 10, int(NOW) - 200, int(NOW) - 4000]))),
    )


STUDIES = st.lists(
    st.tuples(
        st.sampled_from(PATIENTS),
        st.frozensets(st.sampled_from(LABELS), max_size=3),
    ),
    min_size=1,
    max_size=len(UIDS),
)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    policy=policies(),
    principal=principals(),
    studies=STUDIES,
    grants=st.frozensets(st.sampled_from(UIDS), max_size=3),
    action=st.sampled_from([Action.SEARCH, Action.SEARCH, Action.READ, Action.DELETE]),
    rare=st.frozensets(st.sampled_from(LABELS)),
)
@pytest.mark.control("AP-1")
def test_sql_predicate_equals_decide(
    engine: Engine,
    policy: Policy,
    principal: Principal,
    studies: list[tuple[str, frozenset[str]]],
    grants: frozenset[str],
    action: Action,
    rare: frozenset[str],
) -> None:
    """Whatever labels are read from their index (`rare`: IN instead of EXISTS), the same set."""
    facts = [
        StudyFacts(uid, patient or None, labels)
        for uid, (patient, labels) in zip(UIDS, studies, strict=False)
    ]
    expected = {
        f.study_instance_uid
        for f in facts
        if decide(principal, action, f, policy, NOW, grants).allow
    }
    try:
        predicate = compile_policy(policy, principal, action, NOW, grants, rare)
    except NotCompilable:  # pragma: no cover - every criterion of the model compiles
        pytest.fail("the policy model has a criterion without a SQL form")
    with Session(engine) as session, session.begin():
        session.execute(delete(StudyLabel))
        session.execute(delete(Study))
        for f in facts:
            session.add(
                Study(
                    study_instance_uid=f.study_instance_uid,
                    patient_id=f.patient_id,
                    source="test",
                    created_at=datetime.now(UTC),
                    labels=[StudyLabel(label=label) for label in sorted(f.labels)],
                )
            )
        session.flush()
        selected = set(
            session.scalars(select(Study.study_instance_uid).where(as_clause(predicate)))
        )
    assert selected == expected
    event(f"allowed {'none' if not expected else 'all' if len(expected) == len(facts) else 'some'}")


def test_demo_policy_compiles(tmp_path: object) -> None:
    from pathlib import Path

    from dicomweb_gateway.policy import load_policy

    policy = load_policy(Path(__file__).parents[3] / "config" / "policy.yaml")
    clinician = Principal(
        "u",
        "i",
        "ohif-viewer",
        frozenset({"user/ImagingStudy.rs"}),
        frozenset({"clinician"}),
        frozenset({"/site-north"}),
    )
    predicate = compile_policy(policy, clinician, Action.SEARCH, NOW, ())
    assert predicate is not False and predicate is not True
    auditor = Principal(
        "u", "i", "ohif-viewer", frozenset({"user/ImagingStudy.rs"}), frozenset({"auditor"})
    )
    assert compile_policy(policy, auditor, Action.SEARCH, NOW, ()) is False
    assert compile_policy(policy, None, Action.SEARCH, NOW, ()) is False
