"""Ports: defaults, free ports, reuse across `up`, and a clear message for a port in use."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from ztstack import ports
from ztstack.errors import StackError


def test_auto_ports_are_distinct_and_saved(tmp_path: Path) -> None:
    saved = tmp_path / "ports.json"
    chosen = ports.choose("auto", saved)
    assert len({p for _, p in chosen.items()}) == len(ports.Ports().items())
    assert ports.choose("default", saved) == chosen  # reused: URLs stay stable


def test_defaults(tmp_path: Path) -> None:
    assert ports.choose("default", tmp_path / "p.json") == ports.Ports(8443, 8080, 9443, 8042, 4242)


def test_port_in_use_is_reported_with_a_fix() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(StackError, match=f"gateway {port}") as err:
            ports.check_free(ports.Ports(gateway=port, gateway_http=ports.free_port(),
                                         idp=ports.free_port(), orthanc_http=ports.free_port(),
                                         orthanc_dicom=ports.free_port()))  # fmt: skip
        assert err.value.fix
