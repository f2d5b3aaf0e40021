"""`up` tears down a half-started stack (only its own PIDs); `down` stops what `up` recorded."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from ztstack import launcher, procs
from ztstack.errors import StackError
from ztstack.rundir import RunDir

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]
FAIL = [sys.executable, "-c", "print('broken config: no such key'); raise SystemExit(2)"]


def fake_services(*_args: Any) -> list[procs.Service]:
    return [
        procs.Service("idp", SLEEP, lambda: True),
        procs.Service("gateway", FAIL, lambda: False),
    ]


def test_half_started_stack_is_torn_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "build_services", fake_services)
    run = RunDir.at(tmp_path)
    with pytest.raises(StackError, match="gateway exited during start-up") as err:
        launcher.up(run, "native", "auto")
    assert "broken config" in str(err.value)
    assert err.value.fix
    assert procs.read_pid(run, "idp") is None  # stopped and its PID file removed
    assert list(run.pids.glob("*.pid")) == []


def test_compose_not_available_yet(tmp_path: Path) -> None:
    assert launcher.up(RunDir.at(tmp_path), "compose", "auto") == 2


def test_down_stops_recorded_and_clean_removes(tmp_path: Path) -> None:
    run = RunDir.at(tmp_path / "run")
    run.create()
    pid = procs.start(run, procs.Service("orthanc", SLEEP, lambda: True))
    assert launcher.down(run, clean=True) == 0
    assert not procs.alive(pid)
    assert not run.root.exists()


def test_clean_refuses_a_directory_that_is_not_a_run_directory(tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep", encoding="utf-8")
    with pytest.raises(StackError, match="does not look like a run directory"):
        launcher.down(RunDir.at(tmp_path), clean=True)
    assert (tmp_path / "precious").exists()


def test_summary_prints_each_demo_users_password_and_totp_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = {
        "viewer_url": "https://localhost:8443/",
        "dicomweb_url": "https://localhost:8443/dicom-web",
        "gateway_http_url": "http://localhost:8080",
        "idp_issuer": "https://localhost:9443/realms/dicomweb",
        "ca_cert": "/run/pki/ca.pem",
        "archive": {"http_url": "https://localhost:8042"},
        "run_dir": "/run",
        "users": {
            "north-clinician": {"roles": ["clinician"], "password": "pw-1", "totp_secret": "JBSW"},
            "researcher": {"roles": ["researcher"], "password": "pw-2"},
        },
    }
    launcher.print_summary(data)
    out = capsys.readouterr().out
    north = next(line for line in out.splitlines() if line.strip().startswith("north-clinician"))
    assert "pw-1" in north and "JBSW" in north
    researcher = next(line for line in out.splitlines() if line.strip().startswith("researcher"))
    assert "pw-2" in researcher and researcher.rstrip().endswith("-")
