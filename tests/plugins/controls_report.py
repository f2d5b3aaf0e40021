"""Builds the zero-trust controls report (JSON and markdown) from the outcomes of one run.

Kept apart from the pytest hooks (controls.py) so the report format has one place.

JSON (`reports/zero-trust.json`, complete: every control, every test case):
    {generated_at, full_run, summary: {...}, covered_without_passing_test: [ids],
     controls: [{id, title, when, covered, status, meta, passed, failed, other,
                 tests: [{nodeid, outcome}], missing?: [ids]}]}

Markdown (`reports/zero-trust.md`, for an auditor): a summary table, then per control its
test functions with their parametrizations folded ("12 cases, all passed").
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# A meta-control is computed by the plugin at session end instead of by a test.
# GV-2 (CONTROLS.md): every control marked `now` is referenced by at least one passing test.
META_CONTROLS = ("GV-2",)


@dataclass(frozen=True)
class Control:
    id: str
    title: str
    when: str  # "now" | "later"


def _status(outcomes: Iterable[str]) -> str:
    seen = set(outcomes)
    if "failed" in seen:
        return "failed"
    if "passed" in seen:
        return "proven"
    return "untested"


def build_report(
    catalogue: Mapping[str, Control],
    covered: Iterable[str],
    tests: Mapping[str, list[str]],
    outcomes: Mapping[str, str],
    full_run: bool,
) -> dict[str, Any]:
    covered = set(covered)
    controls: list[dict[str, Any]] = []
    for control in catalogue.values():
        cases = [
            {"nodeid": nodeid, "outcome": outcomes.get(nodeid, "not run")}
            for nodeid, ids in sorted(tests.items())
            if control.id in ids
        ]
        counts = Counter(t["outcome"] for t in cases)
        controls.append(
            {
                "id": control.id,
                "title": control.title,
                "when": control.when,
                "covered": control.id in covered,
                "status": _status(counts),
                "meta": control.id in META_CONTROLS,
                "passed": counts["passed"],
                "failed": counts["failed"],
                "other": sum(counts.values()) - counts["passed"] - counts["failed"],
                "tests": cases,
            }
        )
    # GV-2 last, over every other `now` control: proven only when none lacks a passing test.
    lacking = [
        c["id"] for c in controls if c["when"] == "now" and not c["meta"] and not c["passed"]
    ]
    for c in controls:
        if c["meta"]:
            c["status"] = "failed" if lacking else "proven"
            c["missing"] = lacking
    missing = [
        c["id"]
        for c in controls
        if c["covered"] and (c["status"] != "proven" if c["meta"] else not c["passed"])
    ]
    now = [c for c in controls if c["when"] == "now"]
    return {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "full_run": full_run,
        "summary": {
            "controls": len(controls),
            "now": len(now),
            "now_proven": sum(c["status"] == "proven" for c in now),
            "failed": [c["id"] for c in controls if c["status"] == "failed"],
            "now_without_passing_test": lacking,
            "test_cases": len(tests),
        },
        "covered_without_passing_test": missing,
        "controls": controls,
    }


def fold_cases(cases: list[dict[str, str]]) -> list[tuple[str, str]]:
    """(test function, "N cases, all passed" | "passed" | which failed) per test function."""
    by_function: dict[str, list[tuple[str, str]]] = {}
    for t in cases:
        function, _, param = t["nodeid"].partition("[")
        by_function.setdefault(function, []).append((param.rstrip("]"), t["outcome"]))
    rows = []
    for function, runs in by_function.items():
        counts = Counter(outcome for _, outcome in runs)
        if len(runs) == 1 and not runs[0][0]:
            rows.append((function, runs[0][1]))
            continue
        if len(runs) == 1:
            rows.append((function, f"1 case `[{runs[0][0]}]`, {runs[0][1]}"))
            continue
        if len(counts) == 1:
            rows.append((function, f"{len(runs)} cases, all {runs[0][1]}"))
            continue
        parts = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
        odd = [f"`[{p}]` {o}" for p, o in runs if o != "passed"]
        rows.append((function, f"{len(runs)} cases: {parts}; " + "; ".join(odd)))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    kind = "full run, covered list enforced" if report["full_run"] else "partial run, not enforced"
    lines = [
        "# Zero-trust controls report",
        "",
        f"Generated {report['generated_at']} ({kind}). Control catalogue: CONTROLS.md "
        "(copy in `tests/controls.yaml`); declared covered: `tests/controls-covered.txt`.",
        "",
        f"- `now` controls proven: **{s['now_proven']} of {s['now']}**",
        f"- failed: {', '.join(s['failed']) or 'none'}",
        "- covered but without a passing test: "
        + (", ".join(report["covered_without_passing_test"]) or "none"),
        f"- test cases referencing a control: {s['test_cases']}",
        "",
        "## Summary",
        "",
        "| control | title | when | covered | status | passing | failing |",
        "|---|---|---|---|---|---:|---:|",
    ]
    for c in report["controls"]:
        lines.append(
            f"| [{c['id']}](#{c['id'].lower()}) | {_cell(c['title'])} | {c['when']} "
            f"| {'yes' if c['covered'] else 'no'} | {c['status']} | {c['passed']} | {c['failed']} |"
        )
    lines += ["", "## Controls", ""]
    for c in report["controls"]:
        lines += [
            f"### {c['id']}",
            "",
            f"**{c['title']}** ({c['when']}; {'covered' if c['covered'] else 'not covered'}): "
            f"**{c['status']}**",
            "",
        ]
        if c["meta"]:
            lines.append(
                "Computed at session end: proven when every `now` control has a passing test. "
                + (
                    "Without a passing test: " + ", ".join(c["missing"]) + "."
                    if c["missing"]
                    else "All have one."
                )
            )
        elif not c["tests"]:
            lines.append("No test references this control.")
        else:
            lines += [f"- `{function}`: {result}" for function, result in fold_cases(c["tests"])]
        lines.append("")
    return "\n".join(lines)
