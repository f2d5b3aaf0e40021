"""compose/ validated statically (no Docker engine here); each check fails on a planted mistake.

- `docker-compose config -q` (Debian's docker-compose) with the variables `make up` generates,
  and refusal when any `${VAR:?}` is unset (Keycloak would take an unset password literally);
- the compose-spec JSON schema (`check-jsonschema --builtin-schema vendor.compose-spec`);
- rules (STYLE rule 9): only the gateway and its DIMSE door join the archive and store networks,
  internal networks, nothing published but the gateway, its door and the IdP, a healthcheck on
  every service, hardened containers, pinned images, secrets only as `${VAR:?}`.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from ztstack import compose
from ztstack.ports import Ports
from ztstack.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "compose" / "compose.yaml"
REALM_IMPORT = REPO / "idp" / "keycloak" / "realm-dicomweb.json"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
ARCHIVE_SIDE = {"gateway", "dimse"}  # the only services on the archive and store networks
PUBLISHED = {"gateway", "gateway-http", "dimse", "keycloak"}
PINNED_IMAGE = re.compile(
    r"^(?:[a-z0-9.-]+(?::\d+)?/)?[a-z0-9._/-]+"
    r"(?::(?!latest$)[A-Za-z0-9_.-]*\d[A-Za-z0-9_.-]*)?(?:@sha256:[0-9a-f]{64})?$"
)
SECRET_ENV = re.compile(r"PASSWORD|SECRET|JWKS|TOKEN|KEY$")


def _generator() -> Any:
    path = REPO / "idp" / "keycloak" / "generate.py"
    spec = importlib.util.spec_from_file_location("zt_kc_gen_compose", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The variables `make up` writes for compose, from a throw-away run directory."""
    run = RunDir.at(tmp_path_factory.mktemp("compose-run"))
    run.create()
    pki = compose.ensure_pki(run.pki)
    compose.gateway.copy_policy(run)
    compose.render(run, Ports(), pki)
    return compose.env_file(run)


def _docker_compose(env: Path, path: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    assert exe, "Debian's docker-compose is needed (make bootstrap)"
    return subprocess.run(
        [exe, "--env-file", str(env), "-f", str(path), "config", "-q"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


# ------------------------------------------------------------------ docker-compose config


def test_compose_config_accepts_what_make_up_generates(env_file: Path) -> None:
    done = _docker_compose(env_file)
    assert done.returncode == 0, done.stderr


@pytest.mark.control("AO-2")
@pytest.mark.parametrize(
    "variable", ["GATEWAY_URL", "ZT_PASSWORD_RADIOLOGIST", "ZT_AI_NODE_JWKS",
                 "ZT_GATEWAY_DB_PASSWORD", "ZT_KEYCLOAK_ADMIN_PASSWORD"],
)  # fmt: skip
def test_compose_refuses_to_start_with_a_variable_unset(
    env_file: Path, tmp_path: Path, variable: str
) -> None:
    lines = env_file.read_text(encoding="utf-8").splitlines()
    partial = tmp_path / "partial.env"
    partial.write_text("\n".join(ln for ln in lines if not ln.startswith(f"{variable}=")) + "\n")
    done = _docker_compose(partial)
    assert done.returncode != 0
    assert variable in done.stderr, done.stderr


def test_every_realm_placeholder_is_a_required_keycloak_variable() -> None:
    placeholders = set(re.findall(r"\$\{([A-Z0-9_]+)\}", REALM_IMPORT.read_text()))
    env = raw()["services"]["keycloak"]["environment"]
    for name in placeholders:
        assert env.get(name) == f"${{{name}:?}}", name


# ------------------------------------------------------------------ compose-spec schema


def _schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_compose_file_matches_the_compose_spec_schema() -> None:
    done = _schema(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_fails_on_a_planted_mistake(tmp_path: Path) -> None:
    data = raw()
    data["services"]["orthanc"]["readonly"] = True  # a typo of read_only: silently ignored
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    done = _schema(path)
    assert done.returncode != 0
    assert "readonly" in done.stdout + done.stderr


# ------------------------------------------------------------------ zero-trust rules


def rule_violations(data: dict[str, Any]) -> list[str]:
    out: list[str] = []
    networks = data.get("networks", {})
    for name in ("archive", "stores", "idp"):
        if not (networks.get(name) or {}).get("internal"):
            out.append(f"network {name} is not internal")
    for name, svc in data["services"].items():
        joined = set(svc.get("networks") or [])
        if joined & {"archive", "stores"} and name not in ARCHIVE_SIDE | {
            "orthanc", "archive-db", "gateway-db"
        }:  # fmt: skip
            out.append(f"{name} joins {sorted(joined & {'archive', 'stores'})}")
        if "archive" in joined and "stores" in joined and name not in ARCHIVE_SIDE:
            out.append(f"{name} bridges archive and stores")
        mode = svc.get("network_mode")
        if mode and mode != "service:gateway":
            out.append(f"{name}: network_mode {mode}")
        if svc.get("ports") and name not in PUBLISHED:
            out.append(f"{name} publishes {svc['ports']}")
        for port in svc.get("ports") or []:
            if not str(port).startswith("${ZT_BIND:-127.0.0.1}:"):
                out.append(f"{name} publishes {port} on every interface")
        if "healthcheck" not in svc or svc["healthcheck"].get("disable"):
            out.append(f"{name} has no healthcheck")
        if svc.get("privileged"):
            out.append(f"{name} is privileged")
        if svc.get("read_only") is not True:
            out.append(f"{name}: root filesystem not read-only")
        if svc.get("cap_drop") != ["ALL"]:
            out.append(f"{name}: capabilities not dropped")
        if "no-new-privileges:true" not in (svc.get("security_opt") or []):
            out.append(f"{name}: no-new-privileges missing")
        user = str(svc.get("user", ""))
        if user.split(":")[0] in ("0", "root"):
            out.append(f"{name} runs as root")
        image = str(svc.get("image", ""))
        if not PINNED_IMAGE.match(image) or ":" not in image.rsplit("/", 1)[-1]:
            out.append(f"{name}: image {image!r} is not pinned to a version")
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_ENV.search(key) and not re.fullmatch(r"\$\{[A-Z0-9_]+:\?\}", str(value)):
                out.append(f"{name}: secret {key} is not a required ${{VAR:?}}")
        for dep, cond in (svc.get("depends_on") or {}).items():
            if (cond or {}).get("condition") != "service_healthy":
                out.append(f"{name} does not wait for {dep} to be healthy")
    return out


@pytest.mark.control("NW-3")
def test_compose_follows_the_zero_trust_rules() -> None:
    assert rule_violations(raw()) == []


def _bad_image(d: dict[str, Any]) -> None:
    d["services"]["archive-db"]["image"] = "postgres:latest"


def _untagged_image(d: dict[str, Any]) -> None:
    d["services"]["orthanc"]["image"] = "orthancteam/orthanc"


def _keycloak_on_archive(d: dict[str, Any]) -> None:
    d["services"]["keycloak"]["networks"].append("archive")


def _archive_published(d: dict[str, Any]) -> None:
    d["services"]["orthanc"]["ports"] = ["${ZT_BIND:-127.0.0.1}:8042:8042"]


def _no_healthcheck(d: dict[str, Any]) -> None:
    del d["services"]["gateway-db"]["healthcheck"]


def _literal_password(d: dict[str, Any]) -> None:
    d["services"]["keycloak"]["environment"]["ZT_PASSWORD_ADMIN"] = "${ZT_PASSWORD_ADMIN}"


def _root_user(d: dict[str, Any]) -> None:
    d["services"]["gateway"]["user"] = "0:0"


def _archive_not_internal(d: dict[str, Any]) -> None:
    d["networks"]["archive"] = {}


PLANTS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "bad-image-latest": (_bad_image, "archive-db: image 'postgres:latest'"),
    "bad-image-untagged": (_untagged_image, "orthanc: image 'orthancteam/orthanc'"),
    "keycloak-joins-archive": (_keycloak_on_archive, "keycloak joins ['archive']"),
    "archive-published": (_archive_published, "orthanc publishes"),
    "missing-healthcheck": (_no_healthcheck, "gateway-db has no healthcheck"),
    "password-may-be-unset": (_literal_password, "secret ZT_PASSWORD_ADMIN"),
    "gateway-as-root": (_root_user, "gateway runs as root"),
    "archive-network-routable": (_archive_not_internal, "network archive is not internal"),
}


@pytest.mark.control("NW-3")
@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_rules_fail_on_a_planted_mistake(plant: str) -> None:
    mutate, symptom = PLANTS[plant]
    data = copy.deepcopy(raw())
    mutate(data)
    found = rule_violations(data)
    assert any(symptom in v for v in found), found


# ------------------------------------------------------------------ images


def test_keycloak_image_and_features_are_the_generators() -> None:
    gen = _generator()
    kc = raw()["services"]["keycloak"]
    assert kc["build"]["args"]["KEYCLOAK_IMAGE"] == gen.KEYCLOAK_IMAGE
    assert kc["image"].endswith(":" + gen.KEYCLOAK_VERSION)
    dockerfile = (REPO / "compose" / "keycloak" / "Dockerfile").read_text(encoding="utf-8")
    assert f"ARG KEYCLOAK_IMAGE={gen.KEYCLOAK_IMAGE}" in dockerfile
    assert f"KC_FEATURES={','.join(gen.KEYCLOAK_FEATURES)}" in dockerfile
    assert "--import-realm" in kc["command"] and "--optimized" in kc["command"]


def test_gateway_image_is_multi_stage_non_root_and_shell_free() -> None:
    text = (REPO / "services" / "gateway" / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert len(stages) >= 2, stages
    assert stages[-1].startswith("gcr.io/distroless/python3-debian12:nonroot")  # no shell
    final = text.split("\nFROM ")[-1]
    user = re.findall(r"^USER\s+(\S+)", final, flags=re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert re.search(r'^ENTRYPOINT \["/opt/venv/bin/python"', final, flags=re.M)  # exec form
    assert "RUN " not in final  # nothing runs in the shell-less stage
