"""The controls plugin (tests/plugins/controls.py), run on a throw-away test directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]


def run_pytest(tmp_path: Path, test_source: str, enforce: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(test_source, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    control(id): control\n", encoding="utf-8"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "ZT_ENFORCE_CONTROLS": "1" if enforce else "0"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.plugins.controls", "-p", "no:cacheprovider",
         "-q", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


PASSING_NW1 = """
import pytest

@pytest.mark.control("NW-1")
def test_ok():
    assert True
"""


def test_report_lists_every_control_with_its_tests(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, PASSING_NW1, enforce=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "reports" / "zero-trust.json").read_text(encoding="utf-8"))
    catalogue = yaml.safe_load((REPO / "tests" / "controls.yaml").read_text(encoding="utf-8"))
    assert [c["id"] for c in report["controls"]] == [c["id"] for c in catalogue]
    nw1 = next(c for c in report["controls"] if c["id"] == "NW-1")
    assert nw1["status"] == "proven"
    assert nw1["tests"] == [{"nodeid": "test_sample.py::test_ok", "outcome": "passed"}]
    assert (nw1["passed"], nw1["failed"]) == (1, 0)
    markdown = (tmp_path / "reports" / "zero-trust.md").read_text(encoding="utf-8")
    assert "| [NW-1](#nw-1) | TLS on every hop the stack owns | now |" in markdown
    assert "- `test_sample.py::test_ok`: passed" in markdown


PARAMETRIZED = """
import pytest

@pytest.mark.control("NW-2")
@pytest.mark.parametrize("n", [1, 2, 3])
def test_many(n):
    assert True

@pytest.mark.control("AP-6")
@pytest.mark.parametrize("n", ["a", "b", "c"])
def test_some_fail(n):
    assert n != "b"
"""


def test_parametrizations_are_folded_in_markdown_and_complete_in_json(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, PARAMETRIZED, enforce=False)
    assert done.returncode == 1, done.stdout
    report = json.loads((tmp_path / "reports" / "zero-trust.json").read_text(encoding="utf-8"))
    ap6 = next(c for c in report["controls"] if c["id"] == "AP-6")
    assert [t["outcome"] for t in ap6["tests"]] == ["passed", "failed", "passed"]
    assert (ap6["status"], ap6["passed"], ap6["failed"]) == ("failed", 2, 1)
    markdown = (tmp_path / "reports" / "zero-trust.md").read_text(encoding="utf-8")
    assert "- `test_sample.py::test_many`: 3 cases, all passed" in markdown
    folded = "- `test_sample.py::test_some_fail`: 3 cases: 1 failed, 2 passed; `[b]` failed"
    assert folded in markdown
    assert "test_many[1]" not in markdown


def test_gv2_is_computed_from_every_now_control(tmp_path: Path) -> None:
    from tests.plugins.controls_report import Control, build_report

    catalogue = {
        "NW-1": Control("NW-1", "TLS", "now"),
        "DV-3": Control("DV-3", "inventory", "later"),
        "GV-2": Control("GV-2", "every now control", "now"),
    }
    tests = {"t::a": ["NW-1"]}
    proven = build_report(catalogue, ["GV-2"], tests, {"t::a": "passed"}, True)
    gv2 = proven["controls"][-1]
    assert (gv2["status"], gv2["missing"], proven["covered_without_passing_test"]) == (
        "proven",
        [],
        [],
    )
    failed = build_report(catalogue, ["GV-2"], tests, {"t::a": "failed"}, True)
    gv2 = failed["controls"][-1]
    assert (gv2["status"], gv2["missing"]) == ("failed", ["NW-1"])
    assert failed["covered_without_passing_test"] == ["GV-2"]


def test_a_test_cannot_mark_the_meta_control(tmp_path: Path) -> None:
    done = run_pytest(
        tmp_path, 'import pytest\n@pytest.mark.control("GV-2")\ndef test_x():\n    pass\n', False
    )
    assert done.returncode == 4
    assert "GV-2 is computed by the plugin" in done.stdout + done.stderr


def test_full_run_fails_when_a_covered_control_has_no_passing_test(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, PASSING_NW1, enforce=True)
    covered = [
        ln.strip()
        for ln in (REPO / "tests" / "controls-covered.txt").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    if covered == ["NW-1"]:
        assert done.returncode == 0
        return
    assert done.returncode == 1, done.stdout
    assert "have no passing test" in done.stdout


def test_unknown_control_id_is_a_collection_error(tmp_path: Path) -> None:
    done = run_pytest(
        tmp_path, 'import pytest\n@pytest.mark.control("XX-9")\ndef test_x():\n    pass\n', False
    )
    assert done.returncode == 4
    assert "unknown control ID 'XX-9'" in done.stdout + done.stderr
