"""Load and check a policy file; every problem is reported in one message (fail closed).

The gateway refuses to start on any problem: a YAML error, a schema error (pydantic collects
all of them), or a rule that names a label, ACR or rule id the policy does not define.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..context import Action
from .model import Criteria, Policy, Rule


class PolicyError(ValueError):
    """A policy or ingest-rule file is invalid; `problems` lists every one found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


def read_yaml(path: str | Path) -> Any:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(source, [f"cannot read: {exc.strerror or exc}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(source, [f"not valid YAML: {exc}"]) from None


def validation_problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        problems.append(f"{where}: {error['msg']}")
    return problems


def load_policy(path: str | Path) -> Policy:
    return parse_policy(read_yaml(path), str(path))


def parse_policy(data: Any, source: str = "policy") -> Policy:
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(source, validation_problems(exc)) from None
    problems = _semantic_problems(policy)
    if problems:
        raise PolicyError(source, problems)
    return policy


def _semantic_problems(policy: Policy) -> list[str]:
    problems: list[str] = []
    known = set(policy.labels)
    if len(known) != len(policy.labels):
        problems.append("labels: duplicate label")
    if len(set(policy.acr_levels)) != len(policy.acr_levels):
        problems.append("acr_levels: duplicate level")

    def check_labels(where: str, block: Criteria) -> None:
        for field in ("labels_any", "labels_all", "labels_none"):
            for label in getattr(block, field) or ():
                if label not in known:
                    problems.append(f"{where}.{field}: unknown label {label!r}")

    seen: set[str] = set()
    for i, rule in enumerate(policy.rules):
        where = f"rules.{i}"
        if rule.id in seen:
            problems.append(f"{where}.id: duplicate rule id {rule.id!r}")
        seen.add(rule.id)
        check_labels(where, rule)
        for j, exemption in enumerate(rule.unless):
            check_labels(f"{where}.unless.{j}", exemption)
        problems.extend(f"{where}.{p}" for p in _view_problems(rule))  # DA-1
    for i, requirement in enumerate(policy.step_up):
        where = f"step_up.{i}"
        check_labels(where, requirement)
        if requirement.acr is not None and requirement.acr not in policy.acr_levels:
            problems.append(f"{where}.acr: {requirement.acr!r} is not in acr_levels")
        if requirement.acr is None and requirement.max_age is None:
            problems.append(f"{where}: needs acr, max_age or both")
    return problems


def _view_problems(rule: Rule) -> list[str]:
    """A de-identified view is an allow rule for search/read with a project (DA-1)."""
    if rule.view == "identified":
        bad = rule.project is not None or rule.allow_secondary_capture
        return ["project: only with view: deidentified"] if bad else []
    problems = []
    if rule.effect != "allow":
        problems.append("view: deidentified only on allow rules")
    if rule.project is None:
        problems.append("project: required with view: deidentified")
    if rule.actions is None or not set(rule.actions) <= {Action.SEARCH, Action.READ}:
        problems.append("actions: a de-identified view grants search and read only")
    return problems
