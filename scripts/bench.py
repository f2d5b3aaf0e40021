#!/usr/bin/env python3
"""Benchmark the gateway against the archive accessed directly (`make bench`, docs/performance.md).

Workloads: QIDO (search for studies), study metadata, one frame, whole-study retrieval and STOW
of one small instance; each direct to the archive (its own credentials and client certificate)
and through a gateway, at concurrency 1 and 8, several bounded runs each. Prints medians and the
gateway/direct ratio. Loopback only.

The gateway measured is a dedicated one started by this script from the run's own settings with
only the rate limit raised (the stack's gateway would answer 429 at these rates, as it should),
on a free port, and stopped at the end. STOW'd bench instances are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
BENCH_STUDY = "1.2.826.0.1.3680043.10.1234.999"  # all STOW'd bench instances go here


@dataclass
class Target:
    name: str
    base: str  # .../dicom-web
    client: httpx.AsyncClient


@dataclass
class Workload:
    name: str
    method: str
    path: str
    accept: str | None = None
    stow: bool = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(stack: dict[str, Any], run_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    settings_path = run_dir / "gateway" / "settings.yaml"
    settings = yaml.safe_load(settings_path.read_text())
    port = free_port()
    settings["listen"] = {"host": "127.0.0.1", "port": port}
    settings["limits"]["requests_per_minute"] = 10_000_000
    settings["viewer"] = {"dist_dir": None, "config_template": None}
    path = run_dir / "gateway" / "settings-bench.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    log = (run_dir / "logs" / "gateway-bench.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomweb_gateway", "serve", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"https://localhost:{port}"
    ctx = ssl.create_default_context(cafile=stack["ca_cert"])
    for _ in range(100):
        time.sleep(0.2)
        try:
            if httpx.get(url + "/healthz", verify=ctx, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
    proc.terminate()
    raise SystemExit(f"bench gateway did not start; see {run_dir / 'logs' / 'gateway-bench.log'}")


def get_token(stack: dict[str, Any], token: str | None) -> str:
    if token:
        return token
    from dicomweb_cli import login_password

    scopes = "openid user/ImagingStudy.rs user/ImagingStudy.c"
    return str(login_password(stack, "radiologist", scopes).access_token)


def bench_instance() -> tuple[str, bytes]:
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = BENCH_STUDY
    ds.SeriesInstanceUID = BENCH_STUDY + ".1"
    ds.PatientID = "ZT-BENCH"
    ds.PatientName = "Bench^Mark"
    ds.InstitutionName = "North General Hospital"
    ds.Modality = "OT"
    ds.Rows = ds.Columns = 128
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.zeros((128, 128), dtype=np.uint16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    boundary = "bench-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + out.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


async def one(target: Target, w: Workload) -> int:
    headers = {}
    if w.accept:
        headers["Accept"] = w.accept
    if w.stow:
        ctype, body = bench_instance()
        headers["Content-Type"] = ctype
        r = await target.client.post(target.base + w.path, headers=headers, content=body)
        size = len(body)
    else:
        size = 0
        async with target.client.stream(w.method, target.base + w.path, headers=headers) as r:
            async for chunk in r.aiter_raw():
                size += len(chunk)
    if r.status_code >= 400:
        raise RuntimeError(f"{target.name} {w.name}: HTTP {r.status_code}")
    return size


async def run_once(
    target: Target, w: Workload, concurrency: int, seconds: float, max_requests: int
) -> tuple[float, float]:
    """Requests per second and MB/s over a bounded run (time and count both capped)."""
    done = 0
    total = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, total
        while time.perf_counter() < deadline and done < max_requests:
            done += 1
            size = await one(target, w)
            total += size

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return done / elapsed, total / elapsed / 1e6


async def main_async(args: argparse.Namespace, stack: dict[str, Any], password: str) -> int:
    run_dir = Path(stack["run_dir"])
    token = get_token(stack, args.token)
    ca = ssl.create_default_context(cafile=stack["ca_cert"])
    archive = stack["archive"]
    archive_ctx = ssl.create_default_context(cafile=stack["ca_cert"])
    archive_ctx.load_cert_chain(archive["gateway_client_cert"], archive["gateway_client_key"])
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    proc, gateway_url = (
        start_gateway(stack, run_dir) if not args.gateway_url else (None, args.gateway_url)
    )
    # identity on both sides: the gateway never compresses, so the archive must not either.
    plain = {"Accept-Encoding": "identity"}
    direct = Target(
        "direct",
        archive["http_url"] + "/dicom-web",
        httpx.AsyncClient(
            headers=plain,
            verify=archive_ctx,
            auth=(archive["username"], password),
            limits=limits,
            timeout=60,
        ),
    )
    gateway = Target(
        "gateway",
        gateway_url + "/dicom-web",
        httpx.AsyncClient(
            verify=ca,
            headers=plain | {"Authorization": f"Bearer {token}"},
            limits=limits,
            timeout=60,
        ),
    )
    try:
        studies = (await gateway.client.get(gateway.base + "/studies")).json()
        largest = max(studies, key=lambda s: int(s.get("00201208", {}).get("Value", [0])[0]))
        study = largest["0020000D"]["Value"][0]
        inst = (await gateway.client.get(f"{gateway.base}/studies/{study}/instances")).json()[0]
        series, sop = inst["0020000E"]["Value"][0], inst["00080018"]["Value"][0]
        workloads = [
            Workload("qido", "GET", "/studies"),
            Workload("metadata", "GET", f"/studies/{study}/metadata"),
            Workload(
                "frame",
                "GET",
                f"/studies/{study}/series/{series}/instances/{sop}/frames/1",
                'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            ),
            Workload("study", "GET", f"/studies/{study}"),
            Workload("stow", "POST", "/studies", stow=True),
        ]
        if args.only:
            workloads = [w for w in workloads if w.name in args.only.split(",")]
        rows = []
        for w in workloads:
            for concurrency in (1, 8):
                medians: dict[str, tuple[float, float]] = {}
                for target in (direct, gateway):
                    await run_once(target, w, concurrency, 0.5, 50)  # warm-up
                    samples = [
                        await run_once(target, w, concurrency, args.seconds, 20_000)
                        for _ in range(args.runs)
                    ]
                    medians[target.name] = (
                        statistics.median(s[0] for s in samples),
                        statistics.median(s[1] for s in samples),
                    )
                d, g = medians["direct"], medians["gateway"]
                rows.append((w.name, concurrency, d[0], g[0], g[0] / d[0], d[1], g[1]))
                print(
                    f"  {w.name:9s} c={concurrency}  direct {d[0]:8.1f}/s  "
                    f"gateway {g[0]:8.1f}/s  ratio {g[0] / d[0]:.2f}",
                    file=sys.stderr,
                )
        print_table(rows, args)
        return 0
    finally:
        await cleanup(direct)
        await direct.client.aclose()
        await gateway.client.aclose()
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def cleanup(direct: Target) -> None:
    """Remove the bench study from the archive (Orthanc REST, with the archive's credentials)."""
    root = direct.base.removesuffix("/dicom-web")
    found = (await direct.client.post(root + "/tools/lookup", content=BENCH_STUDY)).json()
    for item in found:
        if item.get("Type") == "Study":
            await direct.client.delete(f"{root}/studies/{item['ID']}")


def print_table(rows: list[tuple[Any, ...]], args: argparse.Namespace) -> None:
    print(
        f"\nMedians of {args.runs} runs of up to {args.seconds:g} s each "
        f"(host: {os.cpu_count()} CPUs, loopback).\n"
    )
    print(
        "| workload | concurrency | direct req/s | gateway req/s | gateway/direct | "
        "direct MB/s | gateway MB/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, c, d, g, ratio, dmb, gmb in rows:
        print(f"| {name} | {c} | {d:.1f} | {g:.1f} | {ratio:.2f} | {dmb:.1f} | {gmb:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=".run")
    parser.add_argument("--token", help="an access token (default: log in as radiologist)")
    parser.add_argument("--gateway-url", help="measure this gateway instead of starting one")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--only", help="comma-separated workloads (qido,metadata,frame,study,stow)")
    args = parser.parse_args()
    stack = json.loads((Path(args.run_dir) / "stack.json").read_text())
    password = Path(stack["archive"]["password_file"]).read_text().strip()
    return asyncio.run(main_async(args, stack, password))


if __name__ == "__main__":
    sys.exit(main())
