"""Network namespaces for tests that need a second host (the approach of test_networks.py).

`namespace(tag)` creates a namespace joined to the host by a veth pair on a /30 of
10.231.150-199.0, with a default route to the host, and removes both whatever happens. Each
namespace is a host of its own: what it reaches of the host is what a machine on another
network segment would reach.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Namespace:
    name: str
    host_ip: str  # the host's end of the veth pair
    ip: str  # the namespace's address

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@contextlib.contextmanager
def namespace(tag: str) -> Iterator[Namespace]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail(
            "these tests need root and iproute2 to create network namespaces", pytrace=False
        )
    token = secrets.token_hex(2)
    ns, host_if, ns_if = f"zt-{tag}-{token}", f"ztx{token}{tag[:3]}h", f"ztx{token}{tag[:3]}n"
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    third = next(n for n in range(150, 200) if f"10.231.{n}." not in used)
    host_ip, ns_ip = f"10.231.{third}.1", f"10.231.{third}.2"
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", ns)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        _run("ip", "netns", "exec", ns, "ip", "route", "add", "default", "via", host_ip)
        yield Namespace(ns, host_ip, ns_ip)
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
