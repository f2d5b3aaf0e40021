"""`up` tears down a half-started stack (only its own PIDs); `down` stops what `up` recorded."""

from __future__ import annotations

import json
import os
import subprocess
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


STAND_IN_DOCKER = """#!/bin/sh
# A Docker client whose engine answers `docker info` but cannot pull or start anything.
case "$1" in
  info) echo "Server Version: 28.2.2"; exit 0 ;;
  compose) echo "Error response from daemon: pull access denied for zt/keycloak" >&2; exit 1 ;;
esac
exit 1
"""


def _stand_in_path(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(STAND_IN_DOCKER, encoding="utf-8")
    docker.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _ztstack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ztstack", *args], env=env, text=True,
                          capture_output=True, timeout=240, check=False)  # fmt: skip


def test_compose_asked_for_without_an_engine_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher, "docker_answers", lambda: False)
    with pytest.raises(StackError, match="no Docker engine answered") as err:
        launcher.up(RunDir.at(tmp_path), "compose", "auto")
    assert "\n" not in str(err.value) and "not available" not in str(err.value)


def test_compose_asked_for_fails_in_one_line_when_the_engine_cannot_start_it(
    tmp_path: Path,
) -> None:
    done = _ztstack(_stand_in_path(tmp_path), "up", "--stack", "compose", "--ports", "auto",
                    "--run-dir", str(tmp_path / "run"))  # fmt: skip
    assert done.returncode != 0
    errors = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1, done.stderr
    assert "compose: the Docker engine could not start the stack" in errors[0]
    assert "pull access denied" in errors[0] and "not available" not in done.stdout + done.stderr
    assert not (tmp_path / "run" / "stack.json").exists()


@pytest.mark.e2e
def test_auto_falls_back_to_native_when_the_engine_cannot_start_compose(tmp_path: Path) -> None:
    env, run = _stand_in_path(tmp_path), str(tmp_path / "run")
    try:
        done = _ztstack(env, "up", "--ports", "auto", "--run-dir", run)
        out = done.stdout
        assert done.returncode == 0, out + done.stderr
        assert "stack: compose (a Docker engine answered `docker info`)" in out
        fallback = [ln for ln in out.splitlines() if "falling back to native" in ln]
        assert len(fallback) == 1 and "pull access denied" in fallback[0], out
        assert "ready in" in out
        data = json.loads((tmp_path / "run" / "stack.json").read_text(encoding="utf-8"))
        assert data["mode"] == "native" and data["pids"]["gateway"] > 0
    finally:
        down = _ztstack(env, "down", "--run-dir", run)
        assert down.returncode == 0, down.stderr


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
