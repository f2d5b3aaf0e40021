"""Start, watch and stop the stack's processes by their recorded PIDs, never by name.

Each service runs in its own session (so a terminal's Ctrl-C or the caller's exit does not
reach it), logs to `<run>/logs/<svc>.log` and records its PID in `<run>/pids/<svc>.pid`.
Stopping sends SIGTERM to exactly that PID, waits, then SIGKILL to the same PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StackError
from .rundir import RunDir

STOP_TIMEOUT = 15.0
# Popen objects of the children this process started, kept so they are reaped (not leaked as
# zombies or "still running" warnings); services started by an earlier `up` are not in here.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass
class Service:
    name: str
    argv: list[str]
    healthy: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout: float = 60.0


def _start_ticks(pid: int) -> str | None:
    """The kernel's start time of pid (/proc/<pid>/stat field 22): a PID plus this is unique."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def read_pid(run: RunDir, name: str) -> int | None:
    """The recorded PID, or None when none is recorded or the PID now names another process
    (after a reboot or PID reuse): we never signal a process we did not start."""
    try:
        pid = int(run.pid(name).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    started = run.pid(name).with_suffix(".started")
    if started.exists():
        now = _start_ticks(pid)
        if now is not None and now != started.read_text(encoding="utf-8").strip():
            run.pid(name).unlink(missing_ok=True)
            started.unlink(missing_ok=True)
            return None
    return pid


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie we already reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(run: RunDir, svc: Service) -> int:
    log = run.log(svc.name).open("ab")
    log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} start\n".encode())
    log.flush()
    env = {**os.environ, **svc.env}
    try:
        proc = subprocess.Popen(
            svc.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=svc.cwd,
            env=env,
            start_new_session=True,
        )
    except OSError as e:
        raise StackError(
            f"{svc.name}: cannot run {svc.argv[0]}: {e}", "run `make bootstrap`"
        ) from e
    finally:
        log.close()
    _CHILDREN[proc.pid] = proc
    run.pid(svc.name).write_text(f"{proc.pid}\n", encoding="utf-8")
    run.pid(svc.name).with_suffix(".started").write_text(
        f"{_start_ticks(proc.pid) or ''}\n", encoding="utf-8"
    )
    return proc.pid


def wait_healthy(run: RunDir, svc: Service, pid: int) -> None:
    deadline = time.monotonic() + svc.start_timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if not alive(pid):
            _reap(pid)
            raise StackError(
                f"{svc.name} exited during start-up; last log lines:\n{tail(run.log(svc.name))}",
                f"read {run.log(svc.name)}; a broken config or a port in use is the usual cause",
            )
        if svc.healthy():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise StackError(
        f"{svc.name} did not become healthy within {svc.start_timeout:.0f} s; last log lines:\n"
        f"{tail(run.log(svc.name))}",
        f"read {run.log(svc.name)}",
    )


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not stay a zombie."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(run: RunDir, name: str, timeout: float = STOP_TIMEOUT, signalled: bool = False) -> str:
    """SIGTERM (unless `signalled` already), wait, then SIGKILL; always the recorded PID."""
    pid = read_pid(run, name)
    if pid is None:
        return "not recorded"
    if not alive(pid):
        _reap(pid)
        _forget(run, name)
        return f"stopped (pid {pid})" if signalled else "not running"
    if not signalled:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not alive(pid):
            # It may have turned zombie between the reap and the check: reap it now, or its
            # Popen stays unfinished and warns "still running" when collected.
            _reap(pid)
            _forget(run, name)
            return f"stopped (pid {pid})"
        time.sleep(0.1)
    if read_pid(run, name) != pid:  # exited and the PID was reused meanwhile
        _forget(run, name)
        return f"stopped (pid {pid})"
    os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not alive(pid):
            _reap(pid)
            break
        time.sleep(0.1)
    _forget(run, name)
    return f"killed after {timeout:.0f} s (pid {pid})"


def _forget(run: RunDir, name: str) -> None:
    run.pid(name).unlink(missing_ok=True)
    run.pid(name).with_suffix(".started").unlink(missing_ok=True)


def stop_all(run: RunDir, names: list[str]) -> dict[str, str]:
    """Stop in the reverse of start order; send every SIGTERM first so stops overlap."""
    results = {}
    pending = []
    for name in reversed(names):
        pid = read_pid(run, name)
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGTERM)
            pending.append(name)
        else:
            results[name] = stop(run, name)
    for name in pending:
        results[name] = stop(run, name, signalled=True)
    return results


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + ln for ln in text[-lines:])
