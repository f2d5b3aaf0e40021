"""Shared fixtures for the end-to-end tests (docs/stack.md, "Tests").

- `stack`: the dict from stack.json. Started lazily (only when an e2e test asks for it) with
  `python -m ztstack up --ports auto` in a temporary run directory and stopped at session end;
  or the already running stack named by `ZT_STACK_JSON=/path/to/stack.json` (left running).
  `ZT_STACK_ONLY=orthanc,idp` starts a subset (while a part is still being built).
- `archive_log`: the archive-side request log; `mark()` then `since(mark)` lists what the
  archive accepted in between (proves "the archive saw nothing").
- `https`: an httpx.Client that trusts only the deployment CA.
- `extra_gateway(overrides)`: a context manager starting one more gateway with settings
  overridden (fail-closed tests), stopped on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest_plugins = ["tests.identity_fixtures"]

REPO = Path(__file__).resolve().parent.parent


def _ztstack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztstack", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    existing = os.environ.get("ZT_STACK_JSON")
    if existing:
        yield json.loads(Path(existing).read_text(encoding="utf-8"))
        return
    run_dir = tmp_path_factory.mktemp("zt-run")
    args = ["up", "--stack", "native", "--ports", "auto", "--run-dir", str(run_dir)]
    if os.environ.get("ZT_STACK_ONLY"):
        args += ["--only", os.environ["ZT_STACK_ONLY"]]
    done = _ztstack(*args)
    try:
        if done.returncode != 0:
            pytest.fail(
                f"the test stack did not start (exit {done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}",
                pytrace=False,
            )
        yield json.loads((run_dir / "stack.json").read_text(encoding="utf-8"))
    finally:
        stopped = _ztstack("down", "--run-dir", str(run_dir))
        if stopped.returncode != 0:
            print(stopped.stdout, stopped.stderr, file=sys.stderr)


def ca_context(stack: dict[str, Any], client: tuple[str, str] | None = None) -> ssl.SSLContext:
    """TLS trusting only the deployment CA (no system roots)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=stack["ca_cert"])
    if client is not None:
        ctx.load_cert_chain(*client)
    return ctx


def decision_bound(stack: dict[str, Any]) -> int:
    """Seconds the edge may serve a cached decision (AP-8): 0 without an edge."""
    import yaml

    settings = Path(stack["run_dir"]) / "gateway" / "settings.yaml"
    data = yaml.safe_load(settings.read_text(encoding="utf-8"))
    edge = data.get("edge") or {}
    return int(edge.get("decision_ttl_seconds", 0))


@pytest.fixture(scope="session")
def https(stack: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(verify=ca_context(stack), timeout=30.0) as client:
        yield client


@dataclass(frozen=True)
class ArchiveRequest:
    time: str
    method: str
    uri: str
    ip: str
    username: str


class ArchiveLog:
    """The archive's own record of every HTTP request it accepted (Orthanc Lua filter).

    `since(mark)` leaves out the gateway's own background polling (BACKGROUND), which no test
    request triggers; `since(mark, everything=True)` keeps it.
    """

    # (method, URI prefix): the gateway's index maintenance (docs/policy.md, "Study index"):
    # the change feed poll (policy.change_feed_interval_seconds), the reading of new or changed
    # studies by the archive's own ids (`/studies/{id}`, `/instances/{id}/simplified-tags`,
    # `/tools/find` with the UIDs in its body) and the reconciliation pass (`/studies?expand`,
    # `/statistics`). None of these URIs can name a UID; requests no test triggered.
    BACKGROUND = (
        ("GET", "/changes"),
        ("GET", "/studies"),
        ("GET", "/instances/"),
        ("GET", "/statistics"),
        ("POST", "/tools/find"),
    )

    def __init__(self, path: Path) -> None:
        self.path = path

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def mark(self) -> int:
        return self._size()

    def since(self, mark: int, everything: bool = False) -> list[ArchiveRequest]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(mark)
            text = f.read().decode("utf-8", errors="replace")
        entries = []
        for line in text.splitlines():
            parts = line.split("\t")
            if len(parts) != 5:
                continue
            entry = ArchiveRequest(*parts)
            if everything or not any(
                entry.method == m and entry.uri.startswith(p) for m, p in self.BACKGROUND
            ):
                entries.append(entry)
        return entries


@pytest.fixture
def archive_log(stack: dict[str, Any]) -> ArchiveLog:
    return ArchiveLog(Path(stack["archive"]["request_log"]))


@dataclass(frozen=True)
class ExtraGateway:
    url: str
    port: int
    pid: int
    settings: Path
    log: Path


@contextlib.contextmanager
def gateway_process(
    stack: dict[str, Any], overrides: dict[str, Any], wait_healthy: bool = True
) -> Iterator[ExtraGateway]:
    """One more gateway process with settings deep-merged from `overrides`, stopped on exit."""
    from ztstack import gateway, procs
    from ztstack.health import get_ok
    from ztstack.ports import free_port
    from ztstack.rundir import RunDir

    run = RunDir.at(stack["run_dir"])
    python = gateway.check_installed()
    port = free_port()
    name = f"gateway-extra-{port}"
    settings = gateway.render(
        run,
        port=port,
        issuer=stack["idp_issuer"],
        archive_url=stack["archive"]["http_url"],
        name=f"settings-extra-{port}.yaml",
        # Same resource (token audience) as the main gateway, so its tokens are valid here.
        overrides=gateway.deep_merge({"public_url": stack["resource"]}, overrides),
    )
    url = f"https://localhost:{port}"
    svc = procs.Service(
        name,
        gateway.serve_command(python, settings),
        lambda: get_ok(f"{url}/healthz", Path(stack["ca_cert"])),
    )
    pid = procs.start(run, svc)
    try:
        if wait_healthy:
            procs.wait_healthy(run, svc, pid)
        yield ExtraGateway(url, port, pid, settings, run.log(name))
    finally:
        procs.stop(run, name)


@pytest.fixture
def extra_gateway(
    stack: dict[str, Any],
) -> Callable[..., contextlib.AbstractContextManager[ExtraGateway]]:
    """`with extra_gateway({"audit": {...}}) as gw:` -> a gateway on gw.url with those settings."""

    def start(
        overrides: dict[str, Any], wait_healthy: bool = True
    ) -> contextlib.AbstractContextManager[ExtraGateway]:
        return gateway_process(stack, overrides, wait_healthy)

    return start
