"""docs/security-statement.md is generated from the running configuration (issue 14) and says
what the running stack does: the command is run against the test stack, its claims are checked
with independent probes, and the committed file must be what the command writes (ports, run
directory and control status apart)."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "security-statement.md"


def normalize(text: str) -> str:
    """Without what differs between runs: ports, the run directory, the control status."""
    text = text.split("## 7. Control catalogue")[0]
    text = re.sub(r"(localhost|127\.0\.0\.1):\d+", r"\1:PORT", text)
    return text


@pytest.fixture(scope="module")
def statement(stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("statement") / "security-statement.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomweb_gateway",
            "security-statement",
            "--config",
            str(Path(stack["run_dir"]) / "gateway" / "settings.yaml"),
            "--stack",
            str(Path(stack["run_dir"]) / "stack.json"),
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out.read_text(encoding="utf-8")


def _row(statement: str, name: str) -> list[str]:
    for line in statement.splitlines():
        if line.startswith(f"| {name} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row for {name}")


def _accepts(url: str, version: ssl.TLSVersion) -> bool:
    parts = urlsplit(url)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():  # the probe offers deprecated versions on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    try:
        with (
            socket.create_connection((parts.hostname, parts.port), timeout=3) as raw,
            ctx.wrap_socket(raw),
        ):
            return True
    except (ssl.SSLError, OSError):
        return False


@pytest.mark.control("NW-1")
def test_statement_matches_the_running_stack(stack: dict[str, Any], statement: str) -> None:
    gateway = _row(statement, "gateway")
    assert gateway[3] == "TLS 1.2, TLS 1.3" and gateway[4] == "TLS 1.0, TLS 1.1"
    assert _accepts(stack["gateway_url"], ssl.TLSVersion.TLSv1_3)
    assert not _accepts(stack["gateway_url"], ssl.TLSVersion.TLSv1_1)
    for line in statement.split("TLS 1.2 suites")[1].split("\n\n")[0].splitlines()[2:]:
        suites = line.strip("|").split("|")[1].strip()
        for suite in suites.split(", "):
            if suite != "-":  # BCP 195 / PS3.15 B.12: ECDHE and AEAD only
                assert suite.startswith("ECDHE-") and ("GCM" in suite or "CHACHA20" in suite)
    # The archive's HTTPS port needs the gateway's client certificate: a client without one
    # gets no answer.
    assert _row(statement, "archive-http")[5] == "yes"
    assert _row(statement, "gateway-http")[3] == "none: plain HTTP"
    assert stack["idp_issuer"] in statement and f"`aud` = `{stack['resource']}`" in statement
    assert "**De-identified views (DA-1)**" in statement  # de-identification (issue 19)
    for control in ("ID-1", "NW-1", "AP-1", "VA-6", "DA-1"):
        assert f"| {control} |" in statement


def test_committed_statement_is_generated(statement: str) -> None:
    assert normalize(DOC.read_text(encoding="utf-8")) == normalize(statement), (
        "docs/security-statement.md is stale: regenerate it (see the comment at its top)"
    )
