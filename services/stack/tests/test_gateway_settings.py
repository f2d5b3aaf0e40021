"""The gateway settings the launcher renders: placeholders replaced, ports filled, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ztstack import gateway, pki
from ztstack.rundir import RunDir

pytestmark = pytest.mark.skipif(not gateway.EXAMPLE.exists(), reason="no gateway template")


def render(tmp_path: Path, overrides: dict[str, object] | None = None) -> dict[str, object]:
    run = RunDir.at(tmp_path)
    run.create()
    path = gateway.render(
        run,
        port=18443,
        issuer="https://localhost:19443/realms/dicomweb",
        archive_url="https://localhost:18042",
        overrides=overrides,
    )
    text = path.read_text(encoding="utf-8")
    assert "<run>" not in text and "<repo>" not in text
    data: dict[str, object] = yaml.safe_load(text)
    return data


def test_ports_and_urls_filled(tmp_path: Path) -> None:
    s = render(tmp_path)
    assert s["public_url"] == "https://localhost:18443"
    assert s["listen"] == {"host": "127.0.0.1", "port": 18443}
    assert s["oidc"]["issuer"] == "https://localhost:19443/realms/dicomweb"  # type: ignore[index]
    assert s["archive"]["url"] == "https://localhost:18042"  # type: ignore[index]
    assert s["run_dir"] == str(tmp_path.resolve())


def test_overrides_merge_deeply(tmp_path: Path) -> None:
    s = render(tmp_path, {"oidc": {"issuer": "https://localhost:1/dead"}})
    assert s["oidc"]["issuer"] == "https://localhost:1/dead"  # type: ignore[index]
    assert s["oidc"]["algorithms"]  # type: ignore[index]


def test_the_gateway_accepts_the_rendered_file(tmp_path: Path) -> None:
    settings = pytest.importorskip("dicomweb_gateway.settings")
    run = RunDir.at(tmp_path)
    run.create()
    pki.ensure_pki(run.pki)
    (run.secrets / "archive-password").write_text("x" * 24, encoding="utf-8")
    path = gateway.render(
        run, port=18443, issuer="https://localhost:19443/realms/dicomweb",
        archive_url="https://localhost:18042",
    )  # fmt: skip
    assert settings.load_settings(path) is not None
