#!/usr/bin/env python3
"""Search at hospital scale (`make scale`, issue 12, docs/performance.md): not a timed test.

Starts a stack on free loopback ports in a temporary run directory, then for each size N
(default 1,000, 10,000, 100,000; `SCALE_SIZES=1000,10000` or `--sizes` to change) loads
synthetic one-instance studies straight into the archive (bounded parallel uploads) until it
holds N, waits until the gateway's study index has them all (the change feed), and measures each
demo user's searches direct (the archive's own credentials) and through a gateway:

  worklist   OHIF's study list, first page (limit=101, fuzzymatching=false, includefields)
  deep       the same at offset 10% into the caller's permitted set (direct: of all studies)
  patient    PatientID=<one patient>
  dates      StudyDate=<one month>
  series     series-level search (Modality=CT, limit=25)
  instances  instance-level search (PatientID=<one patient>, limit=25)

p50 and p95 over `--calls` (>= 20) calls each, the gateway workers' RSS before and after;
prints the tables and writes reports/scale.md with the machine's description. The measured
gateway is a dedicated one (the run's settings with the rate limit raised), on a free port.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pydicom
import yaml
from ztstack import dicom_objects

REPO = Path(__file__).resolve().parent.parent
SITES = ("North General Hospital", "South Valley Clinic")
USERS = (
    "north-clinician",
    "south-clinician",
    "radiologist",
    "researcher",
    "er-physician",
    "portal-patient",
    "ai-node",
)
WORKLIST = (
    "limit=101&offset=0&fuzzymatching=false"
    "&includefield=00081030%2C00080060%2C00201208%2C00080061%2C00100010%2C00100020"
)
UID_ROOT = "1.2.826.0.1.3680043.10.4242."


# ------------------------------------------------------------------ synthetic studies


def study_facts(n: int) -> dict[str, Any]:
    """Study n: site, research protocol and patient cycle, so every user sees a share."""
    return {
        "site": SITES[n % 2],
        "trial": n % 10 == 0,
        "patient": "ZT-P001" if n % 97 == 0 else f"ZT-S{n // 3:06d}",
        "date": f"{2015 + n % 10}{1 + n % 12:02d}{1 + n % 28:02d}",
        "modality": ("CT", "MR", "CR", "US")[(n // 2) % 4],
    }


def permitted_share(user: str, n_total: int) -> int:
    """How many synthetic studies each user may see (config/policy.yaml)."""
    counts = {"north": 0, "south": 0, "trial": 0, "p001": 0}
    for n in range(n_total):
        f = study_facts(n)
        counts["north" if f["site"] == SITES[0] else "south"] += 1
        counts["trial"] += f["trial"]
        counts["p001"] += f["patient"] == "ZT-P001"
    return {
        "north-clinician": counts["north"],
        "er-physician": counts["north"],
        "south-clinician": counts["south"],
        "radiologist": counts["north"] + counts["south"],
        "researcher": counts["trial"],
        "ai-node": counts["trial"],
        "portal-patient": counts["p001"],
    }[user]


def template() -> pydicom.Dataset:
    return dicom_objects.instance(rows=8, modality=None)


def instance(ds: pydicom.Dataset, n: int) -> bytes:
    f = study_facts(n)
    ds.StudyInstanceUID = f"{UID_ROOT}{n}"
    ds.SeriesInstanceUID = f"{UID_ROOT}{n}.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}{n}.1.1"
    ds.PatientID = f["patient"]
    ds.PatientName = f"Scale^{f['patient']}"
    ds.InstitutionName = f["site"]
    ds.StudyDate = f["date"]
    ds.StudyTime = f"{n % 24:02d}{n % 60:02d}00"
    ds.AccessionNumber = f"SC{n:07d}"
    ds.StudyDescription = f"scale study {n}"
    ds.Modality = f["modality"]
    if f["trial"]:
        ds.ClinicalTrialProtocolID = "TRIAL-42"
    elif "ClinicalTrialProtocolID" in ds:
        del ds.ClinicalTrialProtocolID
    return dicom_objects.part10(ds)


# ------------------------------------------------------------------ stack and processes


def ztstack(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ztstack", *args], cwd=REPO, check=True)


def start_gateway(stack: dict[str, Any], run_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    settings = yaml.safe_load((run_dir / "gateway" / "settings.yaml").read_text())
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    settings["listen"] = {"host": "127.0.0.1", "port": port}
    settings["limits"]["requests_per_minute"] = 10_000_000
    settings["viewer"] = {"dist_dir": None, "config_template": None}
    path = run_dir / "gateway" / "settings-scale.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    log = (run_dir / "logs" / "gateway-scale.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomweb_gateway", "serve", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"https://localhost:{port}"
    ctx = ssl.create_default_context(cafile=stack["ca_cert"])
    for _ in range(150):
        time.sleep(0.2)
        try:
            if httpx.get(url + "/healthz", verify=ctx, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
    proc.terminate()
    raise SystemExit("scale gateway did not start; see logs/gateway-scale.log")


def worker_rss_mb(pid: int) -> float:
    """Largest RSS among the gateway's worker processes (children of the supervisor)."""
    rss = []
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            status = (child / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == str(pid) and "VmRSS" in fields:
            rss.append(int(fields["VmRSS"].split()[0]) / 1024)
    return max(rss, default=0.0)


# ------------------------------------------------------------------ loading


def load(stack: dict[str, Any], password: str, start: int, stop: int, threads: int) -> float:
    archive = stack["archive"]
    ctx = ssl.create_default_context(cafile=stack["ca_cert"])
    ctx.load_cert_chain(archive["gateway_client_cert"], archive["gateway_client_key"])
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(
                base_url=archive["http_url"],
                verify=ctx,
                auth=(archive["username"], password),
                timeout=60,
            )
            local.ds = template()
        return local.client  # type: ignore[no-any-return]

    done = [0]
    began = time.monotonic()

    def post(n: int) -> None:
        c = client()
        r = c.post("/instances", content=instance(local.ds, n))
        r.raise_for_status()
        done[0] += 1
        if done[0] % 1000 == 0:
            rate = done[0] / (time.monotonic() - began)
            print(f"\r  loaded {start + done[0]}/{stop} ({rate:.0f}/s)", end="", file=sys.stderr)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(post, range(start, stop)))
    print(file=sys.stderr)
    return time.monotonic() - began


def wait_indexed(run_dir: Path, want: int, timeout: float) -> float:
    began = time.monotonic()
    db = sqlite3.connect(f"file:{run_dir / 'gateway' / 'gateway.db'}?mode=ro", uri=True)
    try:
        while True:
            count = db.execute(
                "SELECT count(*) FROM study_index JOIN study USING (study_instance_uid)"
            ).fetchone()[0]
            if count >= want:
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise SystemExit(f"index has {count} of {want} studies after {timeout} s")
            print(f"\r  indexed {count}/{want}", end="", file=sys.stderr)
            time.sleep(2)
    finally:
        print(file=sys.stderr)
        db.close()


# ------------------------------------------------------------------ measuring


def timed(client: httpx.Client, url: str, calls: int) -> tuple[float, float, int]:
    samples = []
    size = 0
    for _ in range(calls):
        began = time.perf_counter()
        r = client.get(url)
        samples.append((time.perf_counter() - began) * 1000)
        if r.status_code not in (200, 204):
            raise SystemExit(f"{url} -> {r.status_code} {r.text[:200]}")
        size = len(r.json()) if r.status_code == 200 and r.content else 0
    samples.sort()
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return statistics.median(samples), p95, size


def queries(offset: int) -> dict[str, str]:
    return {
        "worklist": f"/studies?{WORKLIST}",
        "deep": f"/studies?{WORKLIST.replace('offset=0', f'offset={offset}')}",
        "patient": "/studies?PatientID=ZT-S000100",
        "dates": "/studies?StudyDate=20200101-20200630&limit=101",
        "series": "/series?Modality=CT&limit=25",
        "instances": "/instances?PatientID=ZT-S000100&limit=25",
    }


def token_for(stack: dict[str, Any], user: str) -> str:
    from dicomweb_cli import client_credentials, login_password

    for attempt in range(4):
        try:
            if user == "ai-node":
                return str(
                    client_credentials(stack, "ai-node", "system/ImagingStudy.rs").access_token
                )
            scope = "openid user/ImagingStudy.rs"
            if user == "portal-patient":
                scope = "openid patient/ImagingStudy.rs"
            return str(login_password(stack, user, scope).access_token)
        except Exception as exc:  # a TOTP code is used once: wait for the next one
            if attempt == 3:
                raise
            print(f"  login {user}: {exc!r}; retrying", file=sys.stderr)
            time.sleep(31)
    raise AssertionError("unreachable")


def measure(
    stack: dict[str, Any], password: str, gateway_url: str, n_total: int, calls: int
) -> list[tuple[str, str, float, float, float, float, int]]:
    archive = stack["archive"]
    actx = ssl.create_default_context(cafile=stack["ca_cert"])
    actx.load_cert_chain(archive["gateway_client_cert"], archive["gateway_client_key"])
    gctx = ssl.create_default_context(cafile=stack["ca_cert"])
    plain = {"Accept": "application/dicom+json", "Accept-Encoding": "identity"}
    rows = []
    direct_cache: dict[str, tuple[float, float, int]] = {}
    with httpx.Client(
        base_url=archive["http_url"] + "/dicom-web",
        verify=actx,
        auth=(archive["username"], password),
        headers=plain,
        timeout=300,
    ) as direct:
        for user in USERS:
            token = token_for(stack, user)
            permitted = permitted_share(user, n_total)
            with httpx.Client(
                base_url=gateway_url + "/dicom-web",
                verify=gctx,
                headers=plain | {"Authorization": f"Bearer {token}"},
                timeout=300,
            ) as gateway:
                gq = queries(permitted // 10)
                dq = queries(n_total // 10)
                for name in gq:
                    if name not in direct_cache:
                        direct_cache[name] = timed(direct, dq[name], calls)
                    d50, d95, _ = direct_cache[name]
                    g50, g95, size = timed(gateway, gq[name], calls)
                    rows.append((user, name, d50, d95, g50, g95, size))
                    print(
                        f"  {user:16} {name:10} direct {d50:8.1f} ms  gateway {g50:8.1f} ms"
                        f"  ({size} results)",
                        file=sys.stderr,
                    )
    return rows


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    load = os.getloadavg()
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs ({cpu}), {mem} RAM, Python "
        f"{platform.python_version()}, load average at the end {load[0]:.1f} {load[1]:.1f} "
        f"{load[2]:.1f}"
    )


def table(size: int, rows: list[tuple[str, str, float, float, float, float, int]]) -> list[str]:
    out = [
        f"### {size:,} studies",
        "",
        "| user | search | direct p50 | direct p95 | gateway p50 | gateway p95 | gateway/direct"
        " p50 | results |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for user, name, d50, d95, g50, g95, n in rows:
        out.append(
            f"| {user} | {name} | {d50:.1f} | {d95:.1f} | {g50:.1f} | {g95:.1f} | "
            f"{g50 / d50:.2f} | {n} |"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = os.environ.get("SCALE_SIZES", "1000,10000,100000")
    parser.add_argument("--sizes", default=sizes, help="comma-separated study counts")
    parser.add_argument("--calls", type=int, default=20, help="calls per search (>= 20)")
    parser.add_argument("--threads", type=int, default=6, help="parallel uploads")
    parser.add_argument("--run-dir", help="a run directory to use (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so the stack is stopped in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wanted = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="zt-scale-"))
    ztstack("up", "--stack", "native", "--ports", "auto", "--run-dir", str(run_dir))
    report: list[str] = []
    summary: list[str] = []
    loaded = 0
    proc = None
    try:
        stack = json.loads((run_dir / "stack.json").read_text())
        password = Path(stack["archive"]["password_file"]).read_text().strip()
        demo = 8  # the demo studies the stack seeds
        proc, gateway_url = start_gateway(stack, run_dir)
        for size in wanted:
            print(f"== {size:,} studies", file=sys.stderr)
            load_s = load(stack, password, loaded, size, args.threads)
            rate = (size - loaded) / max(load_s, 1e-9)
            loaded = size
            index_s = wait_indexed(run_dir, size + demo, timeout=max(600, size / 20))
            rss_before = worker_rss_mb(proc.pid)
            rows = measure(stack, password, gateway_url, size, max(20, args.calls))
            rss_after = worker_rss_mb(proc.pid)
            summary.append(
                f"| {size:,} | {load_s:.0f} s ({rate:.0f} studies/s) | {index_s:.0f} s | "
                f"{rss_before:.0f} MB | {rss_after:.0f} MB |"
            )
            report += [*table(size, rows), ""]
            print("\n".join(table(size, rows)))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        if not args.keep:
            ztstack("down", "--run-dir", str(run_dir))
    text = [
        "# `make scale`: searches direct vs through the gateway",
        "",
        f"Machine: {machine()}.",
        "",
        "Times in ms (p50/p95 over the calls of each search, sequential, loopback, TLS both ways).",
        "Direct: the archive's own credentials and client certificate; the same query for every",
        "user (offset 10% of all studies for `deep`). Gateway: each user's token; `deep` at 10%",
        "of that user's permitted studies; the gateway worker with the largest RSS.",
        "",
        "| studies | loading into the archive | index caught up after | worker RSS before"
        " | worker RSS after |",
        "|---:|---:|---:|---:|---:|",
        *summary,
        "",
        *report,
    ]
    out = REPO / "reports" / "scale.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(text) + "\n")
    print("\n".join(text[: 11 + len(summary)]))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
