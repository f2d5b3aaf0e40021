"""Policy and ingest-rule files: every problem reported at once; the gateway refuses to start."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dicomweb_gateway.authorize import load_policy_files
from dicomweb_gateway.policy import PolicyError, load_policy, parse_policy
from dicomweb_gateway.store import load_ingest_rules, parse_ingest_rules
from policy_helpers import DEMO_INGEST_RULES, DEMO_POLICY


def test_demo_files_load() -> None:
    policy, rules = load_policy_files(DEMO_POLICY, DEMO_INGEST_RULES)
    assert {"site:north", "site:south", "research:trial-42", "vip", "legal-hold"} <= set(
        policy.labels
    )
    assert {r.label for r in rules.rules} <= set(policy.labels)


def test_every_problem_is_reported() -> None:
    bad = {
        "version": 1,
        "labels": ["site:north", "site:north"],
        "surprise": True,
        "rules": [
            {"id": "a", "effect": "allow", "labels_any": ["nope"], "actions": ["fly"]},
            {"id": "a", "effect": "maybe"},
            {"id": "b", "effect": "deny", "rolez": ["x"]},
        ],
        "step_up": [{"id": "s", "acr": "urn:zt:acr:gold"}],
    }
    with pytest.raises(PolicyError) as raised:
        parse_policy(bad)
    problems = raised.value.problems
    # the schema errors all at once (semantic checks only run on a well-formed file)
    assert any(p.startswith("surprise") for p in problems)
    assert any(p.startswith("rules.0.actions.0") for p in problems)
    assert any(p.startswith("rules.1.effect") for p in problems)
    assert any(p.startswith("rules.2.rolez") for p in problems)
    assert len(problems) >= 4


def test_semantic_problems_all_at_once() -> None:
    bad = {
        "version": 1,
        "labels": ["site:north", "site:north"],
        "rules": [
            {"id": "a", "effect": "allow", "labels_any": ["nope"]},
            {"id": "a", "effect": "deny", "unless": [{"labels_none": ["gone"]}]},
        ],
        "step_up": [{"id": "s", "acr": "urn:zt:acr:gold"}, {"id": "t", "actions": ["read"]}],
    }
    with pytest.raises(PolicyError) as raised:
        parse_policy(bad)
    assert raised.value.problems == [
        "labels: duplicate label",
        "rules.0.labels_any: unknown label 'nope'",
        "rules.1.id: duplicate rule id 'a'",
        "rules.1.unless.0.labels_none: unknown label 'gone'",
        "step_up.0.acr: 'urn:zt:acr:gold' is not in acr_levels",
        "step_up.1: needs acr, max_age or both",
    ]
    assert "6 problem(s)" in str(raised.value)


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(broken)


def test_ingest_rule_problems() -> None:
    policy = load_policy(DEMO_POLICY)
    bad = {
        "version": 1,
        "rules": [
            {"label": "site:west", "match": {"InstitutionName": "West"}},
            {"label": "vip", "match": {"PatientIdentifier": "x"}},
            {"label": "vip", "match": {}},
        ],
    }
    with pytest.raises(PolicyError) as raised:
        parse_ingest_rules(bad, policy)
    assert raised.value.problems == [
        "rules.0.label: 'site:west' is not declared in the policy",
        "rules.1.match: 'PatientIdentifier' is not a DICOM keyword",
        "rules.2.match: needs at least one attribute",
    ]


def test_both_files_reported_together(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 2, "labels": [], "rules": []}))
    rules = tmp_path / "ingest.yaml"
    rules.write_text(yaml.safe_dump({"version": 1, "rules": [{"label": "x", "match": {"Foo": 1}}]}))
    with pytest.raises(PolicyError) as raised:
        load_policy_files(policy, rules)
    text = str(raised.value)
    assert "policy.yaml: version" in text
    assert "ingest.yaml: rules.0.match" in text


def test_demo_ingest_rules_label_demo_data() -> None:
    rules = load_ingest_rules(DEMO_INGEST_RULES, load_policy(DEMO_POLICY))
    assert rules.labels_for(
        {"InstitutionName": "North General Hospital ", "PatientID": "ZT-P001"}
    ) == {"site:north"}
    assert rules.labels_for(
        {"InstitutionName": "South Valley Clinic", "AccessionNumber": "ZT-LH-0001"}
    ) == {"site:south", "legal-hold"}
    assert rules.labels_for(
        {"InstitutionName": "North General Hospital", "ClinicalTrialProtocolID": "TRIAL-42"}
    ) == {"site:north", "research:trial-42"}
    assert rules.labels_for(
        {"PatientID": "ZT-P004", "InstitutionName": "North General Hospital"}
    ) == {
        "site:north",
        "vip",
    }
    assert rules.labels_for({"InstitutionName": "Elsewhere"}) == set()
