"""settings.py: unknown keys, all problems at once, secrets from files, production profile."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dicomweb_gateway.settings import SettingsError, load_settings, parse_settings
from gateway_fakes import settings_dict


def test_example_file_shape(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "settings.example.yaml"
    data = yaml.safe_load(example.read_text())
    assert set(data) == set(settings_dict(tmp_path))


def test_valid(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(settings_dict(tmp_path)))
    settings = load_settings(path)
    assert settings.archive.password().startswith("Zr8")
    assert settings.dicomweb_base.endswith("/dicom-web")


def test_all_problems_in_one_message(tmp_path: Path) -> None:
    data = settings_dict(tmp_path)
    data["bogus"] = 1
    data["oidc"]["algorithms"] = ["HS256", "none"]
    data["tls"]["cert"] = str(tmp_path / "missing.pem")
    data["public_url"] = "http://gateway.test/path"
    del data["archive"]["url"]
    data["limits"]["preamble_policy"] = "ignore"
    with pytest.raises(SettingsError) as caught:
        parse_settings(data)
    text = str(caught.value)
    for expected in (
        "bogus: unknown key",
        "oidc.algorithms",
        "tls.cert",
        "public_url",
        "archive.url: required",
        "limits.preamble_policy",
    ):
        assert expected in text
    assert len(caught.value.problems) == 6


@pytest.mark.parametrize("secret", ["changeme", "orthanc", "short", ""])
def test_production_refuses_weak_secrets(tmp_path: Path, secret: str) -> None:
    data = settings_dict(tmp_path)
    Path(data["archive"]["password_file"]).write_text(secret)
    data["profile"] = "production"
    with pytest.raises(SettingsError) as caught:
        parse_settings(data)
    assert "archive.password_file" in str(caught.value)


def test_demo_accepts_demo_secret(tmp_path: Path) -> None:
    data = settings_dict(tmp_path)
    Path(data["archive"]["password_file"]).write_text("orthanc")
    assert parse_settings(data).profile == "demo"


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    with pytest.raises(SettingsError):
        load_settings(bad)
    bad.write_text("- a list")
    with pytest.raises(SettingsError):
        load_settings(bad)
