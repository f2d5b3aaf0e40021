"""pytest plugin: the zero-trust controls report (CONTROLS.md, GV-2).

Loaded for every run by the root `conftest.py` (`pytest_plugins`). It

- checks every `@pytest.mark.control("ID")` against `tests/controls.yaml` (an unknown ID stops
  the run at collection, so a typo can never make a control look proven);
- records the outcome of each marked test (setup, call and teardown together);
- writes `reports/zero-trust.md` (summary table, then per control its test functions with
  parametrizations folded) and `reports/zero-trust.json` (every test case) via controls_report;
- computes the meta-control GV-2 at session end (proven only when every `now` control has a
  passing test); a test cannot mark GV-2 itself;
- on a full run (`ZT_ENFORCE_CONTROLS=1`, set by scripts/test.sh) fails the run when a control
  listed in `tests/controls-covered.txt` has no passing test, so coverage can only grow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.plugins.controls_report import META_CONTROLS, Control, build_report, render_markdown

TESTS_DIR = Path(__file__).resolve().parent.parent
CATALOGUE = TESTS_DIR / "controls.yaml"
COVERED = TESTS_DIR / "controls-covered.txt"
ENFORCE_ENV = "ZT_ENFORCE_CONTROLS"


@dataclass
class ControlsState:
    catalogue: dict[str, Control]
    covered: list[str]
    tests: dict[str, list[str]] = field(default_factory=dict)  # nodeid -> control ids
    outcomes: dict[str, str] = field(default_factory=dict)  # nodeid -> passed|failed|skipped
    missing: list[str] = field(default_factory=list)


def load_catalogue(path: Path = CATALOGUE) -> dict[str, Control]:
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    return {e["id"]: Control(e["id"], e["title"], e["when"]) for e in entries}


def load_covered(path: Path = COVERED) -> list[str]:
    if not path.exists():
        return []
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text(encoding="utf-8").splitlines())
    return [ln for ln in lines if ln]


_STATE = pytest.StashKey[ControlsState]()
_ACTIVE: list[ControlsState] = []


def pytest_configure(config: pytest.Config) -> None:
    catalogue = load_catalogue()
    covered = load_covered()
    unknown = [c for c in covered if c not in catalogue]
    if unknown:
        raise pytest.UsageError(f"{COVERED}: unknown control IDs {unknown}")
    config.stash[_STATE] = ControlsState(catalogue, covered)
    # pytest_runtest_logreport gets no config; keep the one state of this session here.
    _ACTIVE[:] = [config.stash[_STATE]]


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    state = config.stash[_STATE]
    errors = []
    for item in items:
        ids = []
        for marker in item.iter_markers("control"):
            if len(marker.args) != 1 or not isinstance(marker.args[0], str):
                errors.append(f"{item.nodeid}: control marker takes exactly one ID string")
                continue
            cid = marker.args[0]
            if cid not in state.catalogue:
                errors.append(f"{item.nodeid}: unknown control ID {cid!r} (see {CATALOGUE})")
            elif cid in META_CONTROLS:
                errors.append(f"{item.nodeid}: {cid} is computed by the plugin, not by a test")
            ids.append(cid)
        if ids:
            state.tests[item.nodeid] = ids
    if errors:
        raise pytest.UsageError("control markers:\n  " + "\n  ".join(errors))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    state = _ACTIVE[0] if _ACTIVE else None
    if state is None or report.nodeid not in state.tests:
        return
    previous = state.outcomes.get(report.nodeid)
    if report.failed:
        state.outcomes[report.nodeid] = "failed"
    elif report.skipped and previous != "failed":
        state.outcomes[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and previous is None:
        state.outcomes[report.nodeid] = "passed"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is None:
        return
    enforced = os.environ.get(ENFORCE_ENV) == "1"
    report = build_report(state.catalogue, state.covered, state.tests, state.outcomes, enforced)
    out = Path(session.config.rootpath) / "reports"
    out.mkdir(exist_ok=True)
    (out / "zero-trust.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "zero-trust.md").write_text(render_markdown(report), encoding="utf-8")
    state.missing = report["covered_without_passing_test"]
    if enforced and state.missing and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    terminalreporter.write_line(f"controls report: {config.rootpath / 'reports' / 'zero-trust.md'}")
    if state.missing and os.environ.get(ENFORCE_ENV) == "1":
        terminalreporter.write_line(
            "FAILED: controls declared covered in tests/controls-covered.txt have no passing "
            f"test: {', '.join(state.missing)}",
            red=True,
            bold=True,
        )
