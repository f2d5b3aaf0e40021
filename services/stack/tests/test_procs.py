"""Processes are started with a PID file and stopped by exactly that PID."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from ztstack import procs
from ztstack.errors import StackError
from ztstack.rundir import RunDir


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    r = RunDir.at(tmp_path)
    r.create()
    return r


def test_start_records_pid_and_stop_ends_it(run: RunDir) -> None:
    svc = procs.Service("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                        lambda: True)  # fmt: skip
    pid = procs.start(run, svc)
    assert procs.read_pid(run, "sleeper") == pid
    procs.wait_healthy(run, svc, pid)
    assert procs.stop(run, "sleeper").startswith("stopped")
    assert not procs.alive(pid)
    assert not run.pid("sleeper").exists()


def test_ignoring_sigterm_gets_sigkill(run: RunDir) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    svc = procs.Service("stubborn", [sys.executable, "-c", code], lambda: True)
    pid = procs.start(run, svc)
    import time

    time.sleep(0.5)  # let it install its handler
    assert procs.stop(run, "stubborn", timeout=0.5).startswith("killed")
    assert not procs.alive(pid)


def test_exit_during_start_is_one_clear_error(run: RunDir) -> None:
    code = "print('bad config'); raise SystemExit(3)"
    svc = procs.Service("broken", [sys.executable, "-c", code], lambda: False)
    pid = procs.start(run, svc)
    with pytest.raises(StackError, match="broken exited during start-up") as err:
        procs.wait_healthy(run, svc, pid)
    assert "bad config" in str(err.value)


def test_a_reused_pid_is_never_signalled(run: RunDir) -> None:
    """A PID file left from before a reboot may name another process now: leave it alone."""
    run.pid("orthanc").write_text(f"{os.getpid()}\n", encoding="utf-8")
    run.pid("orthanc").with_suffix(".started").write_text("1\n", encoding="utf-8")
    assert procs.read_pid(run, "orthanc") is None
    assert procs.stop(run, "orthanc") == "not recorded"
    assert not run.pid("orthanc").exists()
