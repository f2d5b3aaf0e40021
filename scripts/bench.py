#!/usr/bin/env python3
"""Benchmark the deployment against the archive and a plain proxy (`make bench`).

Three targets in one run, on the same machine and data:
- direct: the archive itself, with its own credentials and client certificate;
- gateway: the deployment's front (the edge, nginx, deciding through the gateway; QIDO, STOW
  and everything the gateway must see go through Python) as started by `make up`, but in a copy
  with its rate limits raised (the stack's own would answer 429 at these rates, as it should);
- proxy: a plain nginx terminating TLS and proxying to the same archive with the gateway's
  client certificate and no authorization at all: the ceiling for any proxy on this machine.

Workloads use the real-sized CT volume (ztstack/volume.py: 320 slices of 512x512, and a
64-frame instance): QIDO, study and series metadata, single frames, a batch of 16 frames,
one instance, a whole series and a whole study (MB/s), a rendered image, and STOW of one
512x512 instance; at concurrency 1, 8 and 32; each run bounded in time and in requests. For
each: requests/s, MB/s, p50/p95 latency, and CPU seconds per 1,000 requests of the front's
processes (gateway workers, nginx, edge audit) and of the archive, read from /proc.
Loopback only; bench STOWs are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
BENCH_STUDY = "1.2.826.0.1.3680043.10.1234.999"  # every STOW'd bench instance goes here
FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
PART10_ACCEPT = 'multipart/related; type="application/dicom"'
TICKS = os.sysconf("SC_CLK_TCK")

PROXY_CONF = """daemon off; master_process on; worker_processes 2; pid {dir}/nginx.pid;
error_log stderr warn;
load_module /usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so;
events {{ worker_connections 1024; }}
http {{
  server_tokens off; access_log off; sendfile off; tcp_nodelay on;
  client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp;
  fastcgi_temp_path {dir}/tmp; uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
  client_max_body_size 0;
  upstream archive {{ server {archive}; keepalive 32; keepalive_timeout 1s; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {cert}; ssl_certificate_key {key};
    location / {{
      proxy_pass https://archive; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host {archive};
      proxy_set_header Authorization "{auth}"; proxy_set_header Accept-Encoding "";
      proxy_set_header Forwarded "host=localhost:{port};proto=https";
      proxy_ssl_certificate {client_cert}; proxy_ssl_certificate_key {client_key};
      proxy_ssl_trusted_certificate {ca}; proxy_ssl_verify on; proxy_ssl_name localhost;
      proxy_ssl_session_reuse on; proxy_buffering on; proxy_buffers 64 16k;
      proxy_max_temp_file_size 0; proxy_request_buffering off;
    }}
  }}
}}
"""


@dataclass
class Target:
    name: str
    base: str  # .../dicom-web
    client: httpx.AsyncClient
    pids: list[int] = field(default_factory=list)  # the front's processes (not the archive)


@dataclass
class Workload:
    name: str
    path: str
    accept: str | None = None
    stow: bool = False
    max_concurrency: int = 32
    fresh: bool = False  # STOW: a new SOP Instance UID on every request (what a modality sends)


@dataclass
class Result:
    rps: float
    mbps: float
    p50: float
    p95: float
    front_cpu: float  # CPU seconds per 1,000 requests
    archive_cpu: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- processes


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes and all their descendants (clock ticks -> s)."""
    total = 0
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
            for task in Path(f"/proc/{pid}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (OSError, IndexError, ValueError):
            continue
    return total / TICKS


def wait_https(url: str, ctx: ssl.SSLContext, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(150):
        time.sleep(0.2)
        try:
            if httpx.get(url + "/healthz", verify=ctx, timeout=2).status_code in (200, 404):
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
    proc.terminate()
    raise SystemExit(f"bench process did not start; see {log}")


class Fronts:
    """The bench's own edge + gateway (+ edge audit) and the plain proxy; stopped at exit."""

    def __init__(self, stack: dict[str, Any], run_dir: Path) -> None:
        self.stack, self.run_dir = stack, run_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = self.run_dir / "logs" / f"{name}.log"
        proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start_gateway(self, ttl: int | None = None, tag: str = "bench") -> tuple[str, list[int]]:
        """An edge + gateway (+ edge audit) pair; `ttl` overrides the decision cache bound."""
        from ztstack import edge
        from ztstack.pki import ensure_pki
        from ztstack.rundir import RunDir

        run = RunDir.at(str(self.run_dir))
        settings = yaml.safe_load((self.run_dir / "gateway" / "settings.yaml").read_text())
        if "edge" not in settings:
            raise SystemExit("this stack has no edge (start it with `make up`)")
        sock = self.run_dir / "gateway" / f"{tag}.sock"
        port = free_port()
        settings["listen"] = {"host": "127.0.0.1", "port": port, "uds": str(sock)}
        settings["limits"]["requests_per_minute"] = 100_000_000
        settings["viewer"] = {"dist_dir": None, "config_template": None}
        settings["edge"]["access_log"] = str(self.run_dir / f"edge-{tag}" / "access.log")
        if ttl is not None:
            settings["edge"]["decision_ttl_seconds"] = ttl
            # "uncached" keeps nothing: no decisions, and no study answers (a cold search).
            settings["archive"]["answer_ttl_seconds"] = ttl
        path = self.run_dir / "gateway" / f"settings-{tag}.yaml"
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
        gw = self.spawn(
            f"gateway-{tag}",
            [sys.executable, "-m", "dicomweb_gateway", "serve", "--config", str(path)],
        )
        audit = self.spawn(
            f"edge-audit-{tag}",
            [sys.executable, "-m", "dicomweb_gateway", "edge-audit", "--config", str(path)],
        )
        password = Path(self.stack["archive"]["password_file"]).read_text().strip()
        config = edge.render(
            run,
            ensure_pki(run.pki),
            port=port,
            archive_url=self.stack["archive"]["http_url"],
            archive_username=self.stack["archive"]["username"],
            archive_password=password,
            public_url=f"https://localhost:{port}",
            requests_per_second=1_000_000,
            name=f"edge-{tag}",
            socket=sock,
            decision_ttl_seconds=settings["edge"]["decision_ttl_seconds"],
        )
        nginx = self.spawn(f"edge-{tag}", edge.command(edge.NGINX, config))
        url = f"https://localhost:{port}"
        ctx = ssl.create_default_context(cafile=self.stack["ca_cert"])
        for _ in range(150):
            if sock.exists():
                break
            time.sleep(0.2)
        wait_https(url, ctx, nginx, self.run_dir / "logs" / f"gateway-{tag}.log")
        return url, [gw.pid, nginx.pid, audit.pid]

    def start_python_gateway(self) -> tuple[str, list[int]]:
        """The shape before the edge (issue 13's "before"): the gateway alone on TLS, every
        byte through Python."""
        settings = yaml.safe_load((self.run_dir / "gateway" / "settings.yaml").read_text())
        port = free_port()
        settings["listen"] = {"host": "127.0.0.1", "port": port}
        settings.pop("edge", None)
        settings["limits"]["requests_per_minute"] = 100_000_000
        settings["viewer"] = {"dist_dir": None, "config_template": None}
        path = self.run_dir / "gateway" / "settings-bench-python.yaml"
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
        proc = self.spawn(
            "gateway-bench-python",
            [sys.executable, "-m", "dicomweb_gateway", "serve", "--config", str(path)],
        )
        url = f"https://localhost:{port}"
        ctx = ssl.create_default_context(cafile=self.stack["ca_cert"])
        wait_https(url, ctx, proc, self.run_dir / "logs" / "gateway-bench-python.log")
        return url, [proc.pid]

    def start_proxy(self) -> tuple[str, list[int]]:
        from ztstack.pki import ensure_pki

        pki = ensure_pki(self.run_dir / "pki")
        d = self.run_dir / "proxy-bench"
        (d / "tmp").mkdir(parents=True, exist_ok=True)
        a = self.stack["archive"]
        password = Path(a["password_file"]).read_text().strip()
        port = free_port()
        conf = d / "nginx.conf"
        conf.write_text(
            PROXY_CONF.format(
                dir=d,
                port=port,
                archive=a["http_url"].removeprefix("https://"),
                auth="Basic " + base64.b64encode(f"{a['username']}:{password}".encode()).decode(),
                cert=pki["gateway"].cert,
                key=pki["gateway"].key,
                client_cert=pki["gateway-client"].cert,
                client_key=pki["gateway-client"].key,
                ca=pki["ca"].cert,
            )
        )
        conf.chmod(0o600)
        proc = self.spawn("proxy-bench", ["/usr/sbin/nginx", "-c", str(conf), "-p", str(d)])
        url = f"https://localhost:{port}"
        wait_https(url, ssl.create_default_context(cafile=self.stack["ca_cert"]), proc, conf)
        return url, [proc.pid]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


# --------------------------------------------------------------------------- workloads


def fresh_uid() -> str:
    """A 2.25 UID of fixed length (44 characters), so a body can take a new one in place."""
    return "2.25." + str(10**38 + secrets.randbelow(9 * 10**38))


def renew(body: tuple[str, bytes]) -> tuple[str, bytes]:
    """The same STOW body with a new SOP Instance UID (file meta and dataset)."""
    media, data = body
    old = data[data.index(b"2.25.") :][:44]
    return media, data.replace(old, fresh_uid().encode())


def bench_instance() -> tuple[str, bytes]:
    from ztstack import dicom_objects, volume

    ds = volume.axial(160)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = fresh_uid()
    ds.StudyInstanceUID = BENCH_STUDY
    ds.SeriesInstanceUID = BENCH_STUDY + ".1"
    ds.PatientID, ds.PatientName = "ZT-BENCH", "Bench^Mark"
    data = dicom_objects.part10(ds)
    boundary = "bench-" + secrets.token_hex(6)
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


async def one(target: Target, w: Workload, body: tuple[str, bytes] | None) -> int:
    headers = {"Accept": w.accept} if w.accept else {}
    if w.stow:
        assert body is not None
        headers["Content-Type"] = body[0]
        r = await target.client.post(target.base + w.path, headers=headers, content=body[1])
        size = len(body[1])
    else:
        size = 0
        async with target.client.stream("GET", target.base + w.path, headers=headers) as r:
            async for chunk in r.aiter_raw():
                size += len(chunk)
    if r.status_code >= 400:
        raise RuntimeError(f"{target.name} {w.name}: HTTP {r.status_code}")
    return size


async def measure(
    target: Target,
    w: Workload,
    concurrency: int,
    seconds: float,
    max_requests: int,
    archive_pid: int,
) -> Result:
    """One bounded run: stops at `seconds` or `max_requests`, whichever comes first."""
    latencies: list[float] = []
    total = 0
    started = 0
    deadline = time.perf_counter() + seconds
    bodies = [bench_instance() for _ in range(4)] if w.stow else [None]

    async def worker(n: int) -> None:
        nonlocal total, started
        while time.perf_counter() < deadline and started < max_requests:
            started += 1
            t = time.perf_counter()
            body = bodies[(n + started) % len(bodies)]
            if w.fresh and body is not None:
                body = renew(body)  # about 0.1 ms: a copy of the 512 KiB body
            size = await one(target, w, body)
            total += size  # after the await: `total += await ...` would lose updates
            latencies.append(time.perf_counter() - t)

    front0, archive0 = cpu_seconds(target.pids), cpu_seconds([archive_pid])
    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - start
    front1, archive1 = cpu_seconds(target.pids), cpu_seconds([archive_pid])
    n = max(1, len(latencies))
    latencies.sort()
    if not latencies:  # a warm-up shorter than one answer on a loaded machine
        latencies = [elapsed]
    return Result(
        rps=len(latencies) / elapsed,
        mbps=total / elapsed / 1e6,
        p50=statistics.median(latencies) * 1000,
        p95=latencies[min(n - 1, int(n * 0.95))] * 1000,
        front_cpu=(front1 - front0) / n * 1000,
        archive_cpu=(archive1 - archive0) / n * 1000,
    )


def client(verify: ssl.SSLContext, headers: dict[str, str], auth: Any = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=verify,
        headers={"Accept-Encoding": "identity", **headers},
        auth=auth,
        limits=httpx.Limits(max_connections=40, max_keepalive_connections=40),
        timeout=120,
    )


async def main_async(args: argparse.Namespace, stack: dict[str, Any], password: str) -> int:
    from dicomweb_cli import login_password
    from ztstack import volume

    run_dir = Path(stack["run_dir"])
    archive = stack["archive"]
    ca = ssl.create_default_context(cafile=stack["ca_cert"])
    archive_ctx = ssl.create_default_context(cafile=stack["ca_cert"])
    archive_ctx.load_cert_chain(archive["gateway_client_cert"], archive["gateway_client_key"])
    scope = "openid user/ImagingStudy.rs user/ImagingStudy.c"
    session = None if args.token else login_password(stack, "radiologist", scope)
    token = args.token or session.access_token  # type: ignore[union-attr]
    fronts = Fronts(stack, run_dir)
    targets: list[Target] = []
    try:
        gateway_url, gateway_pids = fronts.start_gateway()
        proxy_url, proxy_pids = fronts.start_proxy()
        if args.uncached:
            uncached_url, uncached_pids = fronts.start_gateway(ttl=0, tag="bench0")
        if args.python:
            python_url, python_pids = fronts.start_python_gateway()
        auth = (archive["username"], password)
        targets = [
            Target("direct", archive["http_url"] + "/dicom-web", client(archive_ctx, {}, auth)),
            Target(
                "gateway",
                gateway_url + "/dicom-web",
                client(ca, {"Authorization": f"Bearer {token}"}),
                gateway_pids,
            ),
            Target("proxy", proxy_url + "/dicom-web", client(ca, {}), proxy_pids),
        ]
        if args.python:
            targets.append(
                Target(
                    "python",
                    python_url + "/dicom-web",
                    client(ca, {"Authorization": f"Bearer {token}"}),
                    python_pids,
                )
            )
        if args.uncached:
            # The alternative measured: a Python decision on every request (no cache), which
            # is what an X-Accel-Redirect design costs per request too.
            targets.append(
                Target(
                    "uncached",
                    uncached_url + "/dicom-web",
                    client(ca, {"Authorization": f"Bearer {token}"}),
                    uncached_pids,
                )
            )
        study = volume.VOLUME.study_instance_uid
        axial = volume.axial(160)
        series, sop = axial.SeriesInstanceUID, axial.SOPInstanceUID
        multi = volume.multiframe()
        instance = f"/studies/{study}/series/{series}/instances/{sop}"
        frames = ",".join(str(i) for i in range(1, 17))
        workloads = [
            Workload("qido", "/studies?limit=25"),
            Workload("study-metadata", f"/studies/{study}/metadata", "application/dicom+json"),
            Workload("series-metadata", f"/studies/{study}/series/{series}/metadata"),
            Workload("frame", instance + "/frames/1", FRAMES_ACCEPT),
            Workload(
                "frames-16",
                f"/studies/{study}/series/{multi.SeriesInstanceUID}/instances/"
                f"{multi.SOPInstanceUID}/frames/{frames}",
                FRAMES_ACCEPT,
            ),
            Workload("instance", instance, PART10_ACCEPT),
            Workload("rendered", instance + "/rendered", "image/jpeg"),
            Workload(
                "series", f"/studies/{study}/series/{series}", PART10_ACCEPT, max_concurrency=8
            ),
            Workload("study", f"/studies/{study}", PART10_ACCEPT, max_concurrency=8),
            # The same four instances again and again (the archive has them: it parses and
            # answers without writing), and new instances (what a modality sends: written).
            Workload("stow", "/studies", stow=True),
            Workload("stow-new", "/studies", stow=True, fresh=True),
        ]
        if args.only:
            workloads = [w for w in workloads if w.name in args.only.split(",")]
        rows: list[tuple[str, int, str, Result]] = []
        archive_pid = int(stack["pids"]["orthanc"])
        for w in workloads:
            for c in args.concurrency:
                if c > w.max_concurrency:
                    continue
                if session is not None and session.claims.get("exp", 0) - time.time() < 90:
                    # Access tokens live 300 s; a whole bench takes longer.
                    session = login_password(stack, "radiologist", scope)
                    for t in targets:
                        if "Authorization" in t.client.headers:
                            t.client.headers["Authorization"] = f"Bearer {session.access_token}"
                for t in targets:
                    if w.stow and t.name in ("uncached", "python"):
                        # A STOW is decided in Python on every target but the plain proxy,
                        # whose row is the ceiling of any TLS proxy for it.
                        continue
                    await measure(t, w, c, 0.5, 20, archive_pid)  # warm-up
                    result = await measure(t, w, c, args.seconds, args.max_requests, archive_pid)
                    rows.append((w.name, c, t.name, result))
                    print(
                        f"  {w.name:16s} c={c:<3d} {t.name:8s} {result.rps:8.1f}/s "
                        f"{result.mbps:8.1f} MB/s p50 {result.p50:7.1f} ms",
                        file=sys.stderr,
                    )
        print_tables(rows, args)
        return 0
    finally:
        for t in targets:
            if t.name == "direct":
                await cleanup(t)
            await t.client.aclose()
        fronts.stop()


async def cleanup(direct: Target) -> None:
    root = direct.base.removesuffix("/dicom-web")
    found = (await direct.client.post(root + "/tools/lookup", content=BENCH_STUDY)).json()
    for item in found:
        if item.get("Type") == "Study":
            await direct.client.delete(f"{root}/studies/{item['ID']}")


def print_tables(rows: list[tuple[str, int, str, Result]], args: argparse.Namespace) -> None:
    print(
        f"\nOne run per cell, up to {args.seconds:g} s or {args.max_requests} requests; "
        f"host: {os.cpu_count()} CPUs, loopback; CPU = seconds per 1,000 requests from /proc.\n"
    )
    print("| workload | c | target | req/s | MB/s | p50 ms | p95 ms | front CPU | archive CPU |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, c, target, r in rows:
        print(
            f"| {name} | {c} | {target} | {r.rps:.1f} | {r.mbps:.1f} | {r.p50:.1f} | "
            f"{r.p95:.1f} | {r.front_cpu:.2f} | {r.archive_cpu:.2f} |"
        )
    by = {(n, c, t): r for n, c, t, r in rows}
    print("\nRatios (throughput; added p50 latency in ms against direct):\n")
    print(
        "| workload | c | gateway/direct | gateway/proxy | proxy/direct | uncached/direct "
        "| python/direct | added p50 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, c, target, r in rows:
        if target != "gateway":
            continue
        d, p = by.get((name, c, "direct")), by.get((name, c, "proxy"))
        gd = f"{r.rps / d.rps:.2f}" if d else "-"
        gp = f"{r.rps / p.rps:.2f}" if p else "-"
        pd = f"{p.rps / d.rps:.2f}" if p and d else "-"
        u = by.get((name, c, "uncached"))
        ud = f"{u.rps / d.rps:.2f}" if u and d else "-"
        py = by.get((name, c, "python"))
        pyd = f"{py.rps / d.rps:.2f}" if py and d else "-"
        added = f"{r.p50 - d.p50:.1f}" if d else "-"
        print(f"| {name} | {c} | {gd} | {gp} | {pd} | {ud} | {pyd} | {added} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--run-dir", default=".run")
    parser.add_argument("--token", help="an access token (default: log in as radiologist)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--max-requests", type=int, default=5000)
    parser.add_argument(
        "--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--only", help="comma-separated workload names")
    parser.add_argument(
        "--uncached", action="store_true", help="also measure the edge with no decision cache"
    )
    parser.add_argument(
        "--python", action="store_true", help="also measure the gateway alone (before the edge)"
    )
    args = parser.parse_args()
    stack = json.loads((Path(args.run_dir) / "stack.json").read_text())
    password = Path(stack["archive"]["password_file"]).read_text().strip()
    return asyncio.run(main_async(args, stack, password))


if __name__ == "__main__":
    sys.exit(main())
