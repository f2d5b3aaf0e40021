"""__main__.py and tls.py: the plain-HTTP redirector and the TLS policy (NW-1, NW-2)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from dicomweb_gateway.__main__ import main, redirect_app
from dicomweb_gateway.tls import TLS12_CIPHERS, gateway_ssl_context
from gateway_fakes import settings_dict


@pytest.mark.anyio
@pytest.mark.control("NW-2")
async def test_redirect_only() -> None:
    transport = httpx.ASGITransport(app=redirect_app("https://localhost:8443"))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost:8080") as c:
        for method in ("GET", "POST", "DELETE"):
            r = await c.request(method, "/dicom-web/studies?PatientID=x", content=b"secret")
            assert r.status_code == 301
            assert r.headers["location"] == "https://localhost:8443/dicom-web/studies"
            assert r.content == b""


@pytest.mark.control("NW-1")
def test_tls_context(tmp_path: Path) -> None:
    data = settings_dict(tmp_path)

    class Config:
        ssl_certfile = data["tls"]["cert"]
        ssl_keyfile = data["tls"]["key"]

    context = gateway_ssl_context(Config(), lambda: ssl.create_default_context())  # type: ignore[arg-type]
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    names = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names and all(n.startswith("ECDHE-") for n in names)
    assert not any("CBC" in n or n.endswith("SHA") for n in names)
    assert "ECDHE" in TLS12_CIPHERS


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(settings_dict(tmp_path)))
    assert main(["check", "--config", str(path)]) == 0
    path.write_text("bogus: 1\n")
    assert main(["check", "--config", str(path)]) == 2
