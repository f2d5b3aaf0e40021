"""Ingest rules: labels assigned from DICOM attributes when a study is stored.

A rule adds its label when every listed attribute (PS3.6 keyword) equals the value, or one of
the values when a list is given. Values are compared as strings with surrounding spaces removed
(PS3.5 6.2: trailing padding is not significant). Labels must be declared in the policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydicom.datadict import dictionary_has_tag, tag_for_keyword

from ..policy import Policy, PolicyError
from ..policy.loader import read_yaml, validation_problems


class IngestRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    match: dict[str, str | list[str]]


class IngestRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    rules: tuple[IngestRule, ...]

    @property
    def keywords(self) -> frozenset[str]:
        return frozenset(k for rule in self.rules for k in rule.match)

    def labels_for(self, attributes: Mapping[str, object]) -> frozenset[str]:
        """The labels every matching rule assigns to a study with these attributes."""
        labels = set()
        for rule in self.rules:
            if all(_matches(attributes.get(k), v) for k, v in rule.match.items()):
                labels.add(rule.label)
        return frozenset(labels)


def _normalise(value: object) -> str:
    return str(value).strip()


def _matches(actual: object, expected: str | list[str]) -> bool:
    if actual is None:
        return False
    wanted = {expected} if isinstance(expected, str) else set(expected)
    values = actual if isinstance(actual, list | tuple) else [actual]
    return any(_normalise(v) in {_normalise(w) for w in wanted} for v in values)


def load_ingest_rules(path: str | Path, policy: Policy | None) -> IngestRules:
    return parse_ingest_rules(read_yaml(path), policy, str(path))


def parse_ingest_rules(
    data: object, policy: Policy | None, source: str = "ingest rules"
) -> IngestRules:
    try:
        rules = IngestRules.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(source, validation_problems(exc)) from None
    problems = []
    for i, rule in enumerate(rules.rules):
        if policy is not None and rule.label not in policy.labels:
            problems.append(f"rules.{i}.label: {rule.label!r} is not declared in the policy")
        if not rule.match:
            problems.append(f"rules.{i}.match: needs at least one attribute")
        for keyword in rule.match:
            tag = tag_for_keyword(keyword)
            if tag is None or not dictionary_has_tag(tag):
                problems.append(f"rules.{i}.match: {keyword!r} is not a DICOM keyword")
    if problems:
        raise PolicyError(source, problems)
    return rules
