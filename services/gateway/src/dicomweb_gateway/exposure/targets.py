"""What the exposure check may touch: an explicit list of endpoints, bounded and rate-limited.

A target is `HOST:PORT`, where HOST is a name, an IPv4 address, `[IPv6]`, or a network no wider
than a /24 (IPv4) or a /120 (IPv6), e.g. `10.0.7.0/24:104`. Several ports for one host are
written as several targets. Nothing is ever scanned that the operator did not name.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass

MAX_IPV4_PREFIX = 24  # never a range wider than a /24
MAX_IPV6_PREFIX = 120
MAX_ENDPOINTS = 1024


class TargetError(ValueError):
    """A target list the check refuses (too wide, malformed, too many endpoints)."""


@dataclass(frozen=True)
class Target:
    name: str  # as the operator wrote the host (a name or an address)
    address: str  # the address connected to
    port: int

    @property
    def label(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        if self.name != self.address:
            return f"{self.name} ({host}):{self.port}"
        return f"{host}:{self.port}"


def _split(spec: str) -> tuple[str, str]:
    spec = spec.strip()
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise TargetError(f"{spec!r}: write IPv6 targets as [ADDRESS]:PORT")
        return host, rest[1:]
    host, sep, port = spec.rpartition(":")
    if not sep or not host:
        raise TargetError(f"{spec!r}: expected HOST:PORT")
    return host, port


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise TargetError(f"{spec!r}: the port must be a number from 1 to 65535")
    return int(text)


def _addresses(host: str, spec: str) -> list[tuple[str, str]]:
    if "/" in host:
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise TargetError(f"{spec!r}: not a network") from None
        limit = MAX_IPV4_PREFIX if network.version == 4 else MAX_IPV6_PREFIX
        if network.prefixlen < limit:
            raise TargetError(
                f"{spec!r}: /{network.prefixlen} is wider than a /{limit}; "
                "name the hosts, or split the range into /24 networks you own"
            )
        hosts = list(network.hosts()) if network.num_addresses > 2 else list(network)
        return [(str(a), str(a)) for a in hosts]
    try:
        return [(host, str(ipaddress.ip_address(host)))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise TargetError(f"{spec!r}: cannot resolve {host!r}") from None
    return [(host, str(infos[0][4][0]))]


def parse_targets(specs: list[str], max_endpoints: int = MAX_ENDPOINTS) -> list[Target]:
    """Every endpoint the specs name, in order, without duplicates."""
    out: list[Target] = []
    seen: set[tuple[str, int]] = set()
    for spec in specs:
        if not spec.strip():
            continue
        host, port_text = _split(spec)
        port = _port(port_text, spec)
        for name, address in _addresses(host, spec):
            if (address, port) in seen:
                continue
            seen.add((address, port))
            out.append(Target(name, address, port))
            if len(out) > max_endpoints:
                raise TargetError(f"more than {max_endpoints} endpoints; scan in smaller parts")
    if not out:
        raise TargetError("no targets given")
    return out


class Budget(Exception):
    """The connection budget of this run is spent."""


class RateLimiter:
    """At most `rate` new connections per second overall, and at most `budget` in one run."""

    def __init__(self, rate: float, budget: int) -> None:
        if rate <= 0 or budget <= 0:
            raise ValueError("rate and budget must be positive")
        self.interval = 1.0 / rate
        self.budget = budget
        self.used = 0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            if self.used >= self.budget:
                raise Budget(f"connection budget of {self.budget} spent")
            self.used += 1
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self.interval
        if wait > 0:
            time.sleep(wait)
