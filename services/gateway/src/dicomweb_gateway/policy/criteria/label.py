"""`labels_any`, `labels_all`, `labels_none`, `unlabelled`: the study's sensitivity labels.

A study the store does not know has no facts, so every label criterion fails for it: an
unknown study can never be let in by a label.
"""

from __future__ import annotations

from .base import Facts, Result


def _labels(facts: Facts) -> frozenset[str] | None:
    if facts.study is None or not facts.study.known:
        return None
    return facts.study.labels


def evaluate_any(spec: tuple[str, ...], facts: Facts) -> Result:
    labels = _labels(facts)
    if labels is not None and labels & set(spec):
        return True, "label-ok"
    return False, "label-unmatched"


def evaluate_all(spec: tuple[str, ...], facts: Facts) -> Result:
    labels = _labels(facts)
    if labels is not None and set(spec) <= labels:
        return True, "label-ok"
    return False, "label-unmatched"


def evaluate_none(spec: tuple[str, ...], facts: Facts) -> Result:
    labels = _labels(facts)
    if labels is not None and not labels & set(spec):
        return True, "label-absent"
    return False, "label-present"


def evaluate_unlabelled(spec: bool, facts: Facts) -> Result:
    labels = _labels(facts)
    if labels is not None and (not labels) == spec:
        return True, "unlabelled-ok"
    return False, "unlabelled-unmatched"
