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
    assert "| **NW-1**" in (tmp_path / "reports" / "zero-trust.md").read_text(encoding="utf-8")


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
