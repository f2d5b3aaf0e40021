"""`up`, `down`, `status`, `logs`: the native stack, start to stop (docs/stack.md).

Start order is Orthanc -> IdP -> gateway -> HTTP redirector; each must be healthy before the
next starts, and any failure tears down exactly what this `up` started.
"""

from __future__ import annotations

import errno
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from . import compose, edge, emr, gateway, idp, orthanc, procs, seed, stackfile
from .errors import StackError
from .health import get_ok
from .pki import Pair, ensure_pki
from .ports import Ports, check_free, choose
from .rundir import RunDir
from .secretfiles import ensure_secret

SERVICES = ["orthanc", "idp", "gateway", "edge", "edge-audit", "gateway-http", "dimse", "emr"]


def say(msg: str) -> None:
    print(f"[ztstack] {msg}", flush=True)


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def choose_mode(requested: str) -> str:
    """native, compose, or "compose-or-native" (auto with an engine: try compose first)."""
    if requested == "native":
        return "native"
    if requested == "compose":
        if not docker_answers():
            raise StackError("compose: no Docker engine answered `docker info` (start Docker, "
                             "or run `make up STACK=native`)")  # fmt: skip
        say("stack: compose (asked for)")
        return "compose"
    if docker_answers():
        say("stack: compose (a Docker engine answered `docker info`)")
        return "compose-or-native"
    say("stack: native (no Docker engine answered `docker info`)")
    return "native"


def up_compose(run: RunDir, ports_mode: str) -> None:
    """Start the compose stack (compose/compose.yaml) and write its stack.json."""
    started_at = time.monotonic()
    run.create()
    ports = choose(ports_mode, run.ports_json)
    check_free(ports)
    data = compose.up(run, ports)
    stackfile.write(run, data)
    say(f"ready in {time.monotonic() - started_at:.1f} s (compose); wrote {run.stack_json}")
    print_summary(data)


def running(run: RunDir, names: Iterable[str]) -> dict[str, int]:
    out = {}
    for name in names:
        pid = procs.read_pid(run, name)
        if pid is not None and procs.alive(pid):
            out[name] = pid
    return out


def archive_password(run: RunDir) -> str:
    return ensure_secret(run.secrets / "archive-password")


def build_services(
    run: RunDir, ports: Ports, pki: dict[str, Pair], only: set[str]
) -> list[procs.Service]:
    """Preflight every part first (one clear message), then render its configuration."""
    ca = pki["ca"].cert
    gateway_url = f"https://localhost:{ports.gateway}"
    issuer = idp.issuer(ports.idp)
    archive_url = f"https://localhost:{ports.orthanc_http}"
    password = archive_password(run)
    services: list[procs.Service] = []
    if "orthanc" in only:
        exe = orthanc.check_installed()
        shim = orthanc.build_tls_shim(run)
        config = orthanc.render(run, pki, password, ports.orthanc_http, ports.orthanc_dicom)
        client = (pki["gateway-client"].cert, pki["gateway-client"].key)
        services.append(
            procs.Service(
                "orthanc",
                orthanc.command(exe, config),
                lambda: get_ok(f"{archive_url}/system", ca, client, (orthanc.USERNAME, password)),
                env=orthanc.environment(shim),
                cwd=run.orthanc,
            )
        )
    if "idp" in only:
        node = idp.check_installed()
        config = idp.render(run, pki, ports.idp, gateway_url, emr.url(ports.emr))
        services.append(
            procs.Service(
                "idp",
                idp.command(node, config),
                lambda: get_ok(f"{issuer}/.well-known/openid-configuration", ca),
                cwd=idp.SERVER_JS.parent,
            )
        )
    if "gateway" in only:
        python = gateway.check_installed()
        nginx = edge.check_installed()
        sock = edge.socket_path(run)
        settings = render_gateway(run, ports)
        services.append(
            procs.Service(
                "gateway",
                gateway.serve_command(python, settings),
                lambda: _uds_ok(sock),
            )
        )
        edge_config = edge.render(
            run,
            pki,
            port=ports.gateway,
            archive_url=archive_url,
            archive_username=orthanc.USERNAME,
            archive_password=password,
            public_url=gateway_url,
        )
        edge.check_config(nginx, edge_config)
        services.append(
            procs.Service(
                "edge",
                edge.command(nginx, edge_config),
                lambda: get_ok(f"{gateway_url}/healthz", ca),
            )
        )
        services.append(
            procs.Service(
                "edge-audit",
                gateway.edge_audit_command(python, settings),
                lambda: True,
            )
        )
        services.append(
            procs.Service(
                "gateway-http",
                gateway.redirect_command(python, ports.gateway_http, gateway_url),
                lambda: _redirects(f"http://localhost:{ports.gateway_http}/"),
            )
        )
        services.append(
            procs.Service(
                "dimse",
                gateway.dimse_command(python, settings),
                lambda: _listening(ports.dimse),
            )
        )
        services += [bridge_service(python, settings, d) for d in gateway.legacy_devices(run)]
    if "emr" in only:
        emr_config = emr.render(run, pki, ports.emr, issuer, gateway_url)
        services.append(
            procs.Service(
                "emr",
                emr.command(emr.check_installed(), emr_config),
                lambda: get_ok(f"{emr.url(ports.emr)}/healthz", ca),
            )
        )
    return services


def render_gateway(run: RunDir, ports: Ports) -> Path:
    """The stack's gateway settings: behind the edge, on its Unix socket (the one rendering,
    for `up` and for every later re-render such as `bridge add`)."""
    return gateway.render(
        run,
        port=ports.gateway,
        issuer=idp.issuer(ports.idp),
        archive_url=f"https://localhost:{ports.orthanc_http}",
        dimse_port=ports.dimse,
        edge={
            "socket": str(edge.socket_path(run)),
            "secret_file": str(edge.secret_file(run)),
            "decision_ttl_seconds": edge.DECISION_TTL_SECONDS,
            "access_log": str(edge.access_log(run)),
        },
    )


def _uds_ok(path: Path) -> bool:
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=2.0) as client:
            return client.get("http://gateway/healthz").status_code == 200
    except (httpx.HTTPError, OSError):
        return False


def bridge_service(python: Path, settings: Path, device: dict[str, Any]) -> procs.Service:
    """The TLS bridge of one legacy device (DV-2): healthy once it listens in its segment."""
    host, port = str(device["listen_host"]), int(device["listen_port"])
    return procs.Service(
        f"bridge-{device['name']}",
        gateway.bridge_command(python, settings, str(device["name"])),
        lambda: _bound(host, port),
    )


def _bound(host: str, port: int) -> bool:
    """Something listens on host:port, found without connecting (a connection from here would
    be a refused peer, and audited as one, by a bridge that admits one address only)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _redirects(url: str) -> bool:
    try:
        r = httpx.get(url, timeout=2.0, follow_redirects=False)
    except (httpx.HTTPError, OSError):
        return False
    return r.is_redirect


def up(run: RunDir, stack: str, ports_mode: str, only: set[str] | None = None) -> int:
    mode = choose_mode(stack)
    if mode != "native":
        try:
            up_compose(run, ports_mode)
            return 0
        except compose.ComposeFailed as e:
            if mode == "compose":  # asked for: one clear line, non-zero exit (via main)
                raise StackError(
                    f"compose: the Docker engine could not start the stack: {e.problem} "
                    f"({e.fix}; `make up STACK=native` runs without Docker)"
                ) from None
            say(f"compose: the Docker engine could not start the stack ({e.problem}); "
                "falling back to native")  # fmt: skip
            compose.down(run)
    return up_native(run, ports_mode, only)


def up_native(run: RunDir, ports_mode: str, only: set[str] | None = None) -> int:
    started_at = time.monotonic()
    run.create()
    bridges = gateway.bridge_names(run)
    wanted = [
        s
        for s in SERVICES + bridges
        if only is None
        or s in only
        or (s not in ("orthanc", "idp", "gateway") and "gateway" in only)
    ]
    already = running(run, SERVICES + bridges)
    if already and all(s in already for s in wanted):
        say(f"the stack in {run.root} is already running ({', '.join(already)})")
        data = stackfile.read(run)
        if data:
            print_summary(data)
        return 0
    if already:
        say(f"stopping the part of an earlier stack still running: {', '.join(already)}")
        procs.stop_all(run, SERVICES + bridges)
    ports = choose(ports_mode, run.ports_json)
    check_free(ports)
    pki = ensure_pki(run.pki, bridges)
    services = build_services(run, ports, pki, set(wanted))
    started: list[str] = []
    pids: dict[str, int] = {}
    try:
        for svc in services:
            t0 = time.monotonic()
            pid = procs.start(run, svc)
            started.append(svc.name)
            procs.wait_healthy(run, svc, pid)
            pids[svc.name] = pid
            say(f"{svc.name}: healthy (pid {pid}, {time.monotonic() - t0:.1f} s)")
            if svc.name == "orthanc":
                n = seed.seed(
                    f"https://localhost:{ports.orthanc_http}",
                    pki["ca"].cert,
                    (pki["gateway-client"].cert, pki["gateway-client"].key),
                    orthanc.USERNAME,
                    archive_password(run),
                )
                say(f"demo data: {n} instances uploaded" if n else "demo data: already present")
    except (StackError, httpx.HTTPError, KeyboardInterrupt) as e:
        say("start failed; stopping what this run started")
        procs.stop_all(run, started)
        if isinstance(e, httpx.HTTPError):
            raise StackError(f"seeding the archive failed: {e}", "read logs/orthanc.log") from e
        raise
    data = stackfile.build(run, ports, pki, idp.issuer(ports.idp), idp.demo_credentials(run), pids)
    stackfile.write(run, data)
    if "gateway" in pids:
        sync_inventory(run, data.get("clients", {}))
    say(f"ready in {time.monotonic() - started_at:.1f} s; wrote {run.stack_json}")
    print_summary(data)
    return 0


def sync_inventory(run: RunDir, clients: dict[str, Any]) -> None:
    """Give the gateway's device inventory (DV-3) the IdP's clients: id, grant types, scopes
    (never keys); the DIMSE front door adds its devices itself when it starts."""
    path = run.gateway / "clients.json"
    listed = {
        cid: {"grant_types": c.get("grant_types", []), "scopes": c.get("scopes", [])}
        for cid, c in clients.items()
    }
    path.write_text(json.dumps(listed, indent=2) + "\n", encoding="utf-8")
    python = gateway.check_installed()
    done = subprocess.run(
        [str(python), "-m", "dicomweb_gateway", "devices", "sync", "--config",
         str(run.gateway / "settings.yaml"), "--clients", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        say(f"device inventory not synced: {done.stderr.strip()[-300:]}")


def print_summary(data: dict[str, Any]) -> None:
    users = data.get("users", {})
    door = data.get("dimse") or {"host": "-", "port": "-", "aet": "-"}
    lines = [
        "",
        f"  Viewer (OHIF)   {data['viewer_url']}",
        f"  EMR (simulator) {data.get('emr_url', '-')}  (orders; launches the viewer and Weasis)",
        f"  DICOMweb        {data['dicomweb_url']}",
        f"  Plain HTTP      {data['gateway_http_url']}  (redirects to HTTPS, carries no data)",
        f"  Identity (OIDC) {data['idp_issuer']}",
        f"  CA certificate  {data['ca_cert']}  (trust it in your browser or client)",
        f"  Archive         {data['archive']['http_url']} (gateway only: client cert + password)",
        f"  DICOM (DIMSE)   {door['host']}:{door['port']} AE {door['aet']}"
        " (TLS; registered devices only, through the gateway)",
        "",
        "  Demo users (generated for this run directory; also in stack.json). Add the TOTP",
        "  secret to any RFC 6238 authenticator app. Try north-clinician first.",
        f"    {'user':<16} {'roles':<22} {'password':<24} TOTP secret",
    ]
    for name, user in sorted(users.items()):
        roles = ",".join(user.get("roles", []))
        totp = user.get("totp_secret") or "-"
        lines.append(f"    {name:<16} {roles:<22} {user.get('password', '?'):<24} {totp}")
    if not users:
        lines.append("    (none yet: the IdP was not started)")
    lines += [
        "",
        "  Walk-through:",
        f"    1. curl --cacert {data['ca_cert']} {data['dicomweb_url']}/studies   -> 401",
        f"    2. open {data['viewer_url']}, sign in as north-clinician (password + TOTP):",
        "       North General studies only; the VIP study of Vip^Dan is refused.",
        "    3. sign in as south-clinician: only South Valley Clinic studies.",
        f"    4. .venv/bin/dicomweb-cli login --stack {data['run_dir']}/stack.json "
        "--user radiologist",
        "       -> a DPoP-bound access token for scripts (see idp/client).",
        "    5. `make status`, `make logs`; `make down` stops everything (CLEAN=1 wipes data).",
        "",
    ]
    print("\n".join(lines), flush=True)


def down(run: RunDir, clean: bool) -> int:
    if not run.root.exists():
        say(f"nothing to stop: {run.root} does not exist")
        return 0
    data = stackfile.read(run) or {}
    if data.get("mode") == "compose":
        rc = compose.down(run)
        say("compose: stopped" if rc == 0 else f"compose: `docker compose down` exited {rc}")
    names = SERVICES + [p.stem for p in sorted(run.pids.glob("*.pid")) if p.stem not in SERVICES]
    for name, result in procs.stop_all(run, names).items():
        if result != "not recorded":
            say(f"{name}: {result}")
    if clean:
        if not (run.pids.is_dir() and (run.pki.is_dir() or run.stack_json.exists())):
            raise StackError(f"{run.root} does not look like a run directory; not removing it")
        shutil.rmtree(run.root)
        say(f"removed {run.root}")
    else:
        say(f"data kept in {run.root} (`--clean` removes it)")
    return 0


def status(run: RunDir) -> int:
    data = stackfile.read(run)
    names = SERVICES + gateway.bridge_names(run)
    alive = running(run, names)
    for name in names:
        pid = procs.read_pid(run, name)
        state = f"running (pid {pid})" if name in alive else "stopped"
        print(f"  {name:<13} {state}")
    if data:
        print(f"  gateway       {data['gateway_url']}")
        print(f"  idp           {data['idp_issuer']}")
        print(f"  archive       {data['archive']['http_url']}")
    return 0


def logs(run: RunDir, lines: int = 20) -> int:
    files = sorted(run.logs.glob("*.log")) if run.logs.is_dir() else []
    if not files:
        say(f"no logs in {run.logs}")
        return 0
    for path in files:
        print(f"==> {path} <==")
        print(procs.tail(Path(path), lines))
    sys.stdout.flush()
    return 0


# --- legacy devices behind a TLS bridge (DV-2) -------------------------------------------------


def _restart_door_and_bridges(run: RunDir, start_bridge: str | None) -> dict[str, int]:
    """Re-render the gateway settings, restart the DIMSE front door (it pins the certificates
    it admits at start) and start one bridge; returns the new PIDs."""
    ports = choose("default", run.ports_json)
    ensure_pki(run.pki, gateway.bridge_names(run))
    python = gateway.check_installed()
    settings = render_gateway(run, ports)
    pids: dict[str, int] = {}
    if procs.read_pid(run, "dimse") is not None:
        procs.stop(run, "dimse")
        door = procs.Service(
            "dimse",
            gateway.dimse_command(python, settings),
            lambda: _bound("127.0.0.1", ports.dimse),
        )
        pids["dimse"] = procs.start(run, door)
        procs.wait_healthy(run, door, pids["dimse"])
        say(f"dimse: restarted (pid {pids['dimse']}) with the legacy devices' bridges registered")
    for device in gateway.legacy_devices(run):
        if f"bridge-{device['name']}" != start_bridge:
            continue
        svc = bridge_service(python, settings, device)
        pid = procs.start(run, svc)
        try:
            procs.wait_healthy(run, svc, pid)
        except StackError:
            procs.stop(run, svc.name)
            raise
        pids[svc.name] = pid
        say(
            f"{svc.name}: listening on {device['listen_host']}:{device['listen_port']} for "
            f"{device['ae_title']} at {device['host']} (pid {pid})"
        )
    return pids


def _update_stack_json(run: RunDir, pids: dict[str, int], gone: str | None = None) -> None:
    data = stackfile.read(run)
    if data is None:
        return
    data["pids"] = {k: v for k, v in {**data.get("pids", {}), **pids}.items() if k != gone}
    data.setdefault("dimse", {})["legacy"] = stackfile.legacy(run)
    stackfile.write(run, data)


def bridge_add(run: RunDir, device: dict[str, Any]) -> int:
    """Register a legacy device, restart the door, start its bridge (`ztstack bridge add`)."""
    if not run.stack_json.exists():
        raise StackError(f"no stack in {run.root}", "start it first: `make up`")
    devices = [d for d in gateway.legacy_devices(run) if d["name"] != device["name"]]
    name = f"bridge-{device['name']}"
    if procs.read_pid(run, name) is not None:
        procs.stop(run, name)
    gateway.write_legacy_devices(run, [*devices, device])
    try:
        pids = _restart_door_and_bridges(run, name)
    except StackError:
        gateway.write_legacy_devices(run, devices)
        raise
    _update_stack_json(run, pids)
    return 0


def bridge_remove(run: RunDir, name: str) -> int:
    devices = gateway.legacy_devices(run)
    if not any(d["name"] == name for d in devices):
        say(f"no legacy device {name!r}")
        return 0
    say(f"bridge-{name}: {procs.stop(run, f'bridge-{name}')}")
    gateway.write_legacy_devices(run, [d for d in devices if d["name"] != name])
    pids = _restart_door_and_bridges(run, None)
    _update_stack_json(run, pids, gone=f"bridge-{name}")
    return 0
