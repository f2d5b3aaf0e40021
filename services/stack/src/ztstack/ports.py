"""Listening ports: the documented defaults for `make up`, or free loopback ports for tests."""

from __future__ import annotations

import errno
import json
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import StackError


@dataclass(frozen=True)
class Ports:
    gateway: int = 8443
    gateway_http: int = 8080
    idp: int = 9443
    orthanc_http: int = 8042
    orthanc_dicom: int = 4242  # configured but closed: the archive takes no DICOM (DV-4)
    dimse: int = 11112  # the gateway's DIMSE front door, the only DICOM listener
    emr: int = 8444  # the EMR simulator (issue 19)

    def items(self) -> list[tuple[str, int]]:
        return list(asdict(self).items())


def free_port() -> int:
    """A port the kernel considers free right now on loopback (races are caught at start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auto_ports() -> Ports:
    chosen: set[int] = set()
    values = []
    for _ in range(len(Ports().items())):
        p = free_port()
        while p in chosen:
            p = free_port()
        chosen.add(p)
        values.append(p)
    return Ports(*values)


def choose(mode: str, saved: Path) -> Ports:
    """Reuse the ports of an earlier `up` in this run directory, so URLs stay stable."""
    fresh = auto_ports() if mode == "auto" else Ports()
    if saved.exists():
        known = json.loads(saved.read_text(encoding="utf-8"))
        ports = Ports(**{**asdict(fresh), **known})  # a port added since keeps the new choice
        if set(known) == set(asdict(ports)):
            return ports
    else:
        ports = fresh
    saved.write_text(json.dumps(asdict(ports), indent=2) + "\n", encoding="utf-8")
    return ports


def in_use(port: int) -> bool:
    """True when something already listens on the port (Orthanc binds every interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))  # noqa: S104 - a probe, closed at once
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def check_free(ports: Ports) -> None:
    busy = [f"{name} {port}" for name, port in ports.items() if in_use(port)]
    if busy:
        raise StackError(
            f"port(s) already in use: {', '.join(busy)}",
            "stop what listens there (`ss -ltnp`), or run `make down` if it is an earlier "
            "stack, or start with `--ports auto` in a new run directory",
        )
