"""compose/ validated statically (no Docker engine here); each check fails on a planted mistake.

- `docker-compose config -q` (Debian's docker-compose) with the variables `make up` generates,
  and refusal when any `${VAR:?}` is unset (Keycloak would take an unset password literally);
- the compose-spec JSON schema (`check-jsonschema --builtin-schema vendor.compose-spec`);
- rules (STYLE rule 9): only the gateway and its DIMSE door join the archive and store networks,
  internal networks, nothing published but the gateway, its door and the IdP, a healthcheck on
  every service, hardened containers, pinned images, secrets only as `${VAR:?}`.

The same for the dcm4chee override (`-f compose.yaml -f dcm4chee.yaml`, docs/archives.md): the
rules run on the two files merged as compose merges them (`merged`, checked against
docker-compose's own merge), and its stores and gateway settings are checked as rendered.
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
DCM4CHEE = REPO / "compose" / "dcm4chee.yaml"
REALM_IMPORT = REPO / "idp" / "keycloak" / "realm-dicomweb.json"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
ARCHIVE_SIDE = {"gateway", "dimse"}  # the only services on the archive and store networks
# Who may join each private network (every one is internal): the gateway's two containers and
# the archive or store behind it; an archive's own stores only with that archive.
MEMBERS = {
    "archive": ARCHIVE_SIDE | {"orthanc", "archive-db"},
    "stores": ARCHIVE_SIDE | {"gateway-db"},
    "idp": {"keycloak", "keycloak-db"},
    "dcm4chee": ARCHIVE_SIDE | {"dcm4chee"},
    "dcm4chee-stores": {"dcm4chee", "dcm4chee-ldap", "dcm4chee-db"},
}
PUBLISHED = {"gateway", "gateway-http", "dimse", "keycloak"}
PINNED_IMAGE = re.compile(
    r"^(?:[a-z0-9.-]+(?::\d+)?/)?[a-z0-9._/-]+"
    r"(?::(?!latest$)[A-Za-z0-9_.-]*\d[A-Za-z0-9_.-]*)?(?:@sha256:[0-9a-f]{64})?$"
)
SECRET_ENV = re.compile(r"PASSWORD|PASS$|SECRET|JWKS|TOKEN|KEY$")  # PASS: LDAP_ROOTPASS


def _generator() -> Any:
    path = REPO / "idp" / "keycloak" / "generate.py"
    spec = importlib.util.spec_from_file_location("zt_kc_gen_compose", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raw(path: Path = COMPOSE) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def _volume_target(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry["target"])
    return re.sub(r"\$\{[^}]*\}", "-", str(entry)).split(":")[1]


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge of an override file, for the keys these files use: service networks are
    a union, depends_on and environment mappings are updated, volumes replace the entry with
    the same container path, anything else is replaced; top-level maps are updated."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key != "services":
            if isinstance(value, dict):
                out.setdefault(key, {}).update(copy.deepcopy(value))
            continue
        for name, svc in value.items():
            mine = out["services"].setdefault(name, {})
            for k, v in copy.deepcopy(svc).items():
                if k == "networks":
                    have = list(mine.get(k) or [])
                    mine[k] = have + [n for n in v if n not in have]
                elif k in ("depends_on", "environment") and isinstance(v, dict):
                    mine[k] = {**(mine.get(k) or {}), **v}
                elif k == "volumes":
                    targets = {_volume_target(e) for e in v}
                    kept = [e for e in mine.get(k) or [] if _volume_target(e) not in targets]
                    mine[k] = kept + v
                else:
                    mine[k] = v
    return out


def with_dcm4chee() -> dict[str, Any]:
    return merged(raw(), raw(DCM4CHEE))


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The variables `make up` writes for compose, from a throw-away run directory."""
    run = RunDir.at(tmp_path_factory.mktemp("compose-run"))
    run.create()
    pki = compose.ensure_pki(run.pki)
    compose.gateway.copy_policy(run)
    compose.render(run, Ports(), pki)
    return compose.env_file(run)


def _docker_compose(
    env: Path, *paths: Path, args: tuple[str, ...] = ("-q",)
) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    assert exe, "Debian's docker-compose is needed (make bootstrap)"
    files = [a for p in paths or (COMPOSE,) for a in ("-f", str(p))]
    return subprocess.run(
        [exe, "--env-file", str(env), *files, "config", *args],
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


def test_compose_config_accepts_the_dcm4chee_override(env_file: Path) -> None:
    done = _docker_compose(env_file, COMPOSE, DCM4CHEE)
    assert done.returncode == 0, done.stderr


@pytest.mark.control("AO-2")
@pytest.mark.parametrize(
    "variable", ["ZT_DCM4CHEE_DB_PASSWORD", "ZT_DCM4CHEE_LDAP_PASSWORD",
                 "ZT_DCM4CHEE_LDAP_CONFIG_PASSWORD", "ZT_DCM4CHEE_KEYSTORE_PASSWORD"],
)  # fmt: skip
def test_dcm4chee_refuses_to_start_with_a_variable_unset(
    env_file: Path, tmp_path: Path, variable: str
) -> None:
    lines = env_file.read_text(encoding="utf-8").splitlines()
    partial = tmp_path / "partial.env"
    partial.write_text("\n".join(ln for ln in lines if not ln.startswith(f"{variable}=")) + "\n")
    assert _docker_compose(partial).returncode == 0  # compose.yaml alone does not need it
    done = _docker_compose(partial, COMPOSE, DCM4CHEE)
    assert done.returncode != 0
    assert variable in done.stderr, done.stderr


def test_merge_is_docker_composes_merge(env_file: Path) -> None:
    """The rules judge `merged(...)`: per service, the networks, dependencies and mount points
    it yields are those docker-compose's own merge yields."""
    done = _docker_compose(env_file, COMPOSE, DCM4CHEE, args=())
    assert done.returncode == 0, done.stderr
    theirs = yaml.safe_load(done.stdout)["services"]
    ours = with_dcm4chee()["services"]
    assert set(theirs) == set(ours)
    for name, svc in ours.items():
        other = theirs[name]
        assert set(svc.get("networks") or []) == set(other.get("networks") or []), name
        assert set(svc.get("depends_on") or {}) == set(other.get("depends_on") or {}), name
        mine = sorted(_volume_target(v) for v in svc.get("volumes") or [])
        assert mine == sorted(_volume_target(v) for v in other.get("volumes") or []), name


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


def test_dcm4chee_override_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    done = _schema(DCM4CHEE)
    assert done.returncode == 0, done.stdout + done.stderr
    path = tmp_path / "merged.yaml"
    path.write_text(yaml.safe_dump(with_dcm4chee()), encoding="utf-8")
    done = _schema(path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_fails_on_a_planted_mistake_in_the_override(tmp_path: Path) -> None:
    data = raw(DCM4CHEE)
    data["services"]["dcm4chee"]["healthcheck"]["start_period"] = 120  # a number, not a duration
    path = tmp_path / "dcm4chee.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    done = _schema(path)
    assert done.returncode != 0
    assert "start_period" in done.stdout + done.stderr


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
    for name in MEMBERS:
        if name in networks and not (networks[name] or {}).get("internal"):
            out.append(f"network {name} is not internal")
    for name in ("archive", "stores", "idp"):  # compose.yaml's own: never optional
        if name not in networks:
            out.append(f"network {name} is missing")
    for name, svc in data["services"].items():
        joined = set(svc.get("networks") or [])
        if not joined <= set(networks) | {"default"}:
            out.append(f"{name} joins undeclared {sorted(joined - set(networks))}")
        intruded = sorted(n for n in joined if n in MEMBERS and name not in MEMBERS[n])
        if intruded:
            out.append(f"{name} joins {intruded}")
        if "default" in joined or (not joined and "network_mode" not in svc):
            out.append(f"{name} joins the default (routable) network")
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
        images = [str(svc.get("image", ""))] + [
            str(v) for k, v in ((svc.get("build") or {}).get("args") or {}).items()
            if k.endswith("_IMAGE")
        ]  # fmt: skip
        for image in images:
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


@pytest.mark.control("NW-3")
def test_compose_with_dcm4chee_follows_the_zero_trust_rules() -> None:
    assert rule_violations(with_dcm4chee()) == []


def _dcm4chee_published(d: dict[str, Any]) -> None:
    d["services"]["dcm4chee"]["ports"] = ["${ZT_BIND:-127.0.0.1}:8443:8443"]


def _ldap_on_gateway_side(d: dict[str, Any]) -> None:
    d["services"]["dcm4chee-ldap"]["networks"].append("dcm4chee")


def _orthanc_reaches_dcm4chee(d: dict[str, Any]) -> None:
    d["services"]["orthanc"]["networks"].append("dcm4chee")


def _dcm4chee_stores_routable(d: dict[str, Any]) -> None:
    d["networks"]["dcm4chee-stores"] = {"internal": False}


def _dcm4chee_no_healthcheck(d: dict[str, Any]) -> None:
    del d["services"]["dcm4chee-ldap"]["healthcheck"]


def _ldap_password_may_be_unset(d: dict[str, Any]) -> None:
    d["services"]["dcm4chee"]["environment"]["LDAP_ROOTPASS"] = "secret"


def _dcm4chee_base_untagged(d: dict[str, Any]) -> None:
    d["services"]["dcm4chee"]["build"]["args"]["DCM4CHEE_IMAGE"] = "dcm4che/dcm4chee-arc-psql"


def _dcm4chee_writable(d: dict[str, Any]) -> None:
    del d["services"]["dcm4chee-db"]["read_only"]


def _gateway_does_not_wait(d: dict[str, Any]) -> None:
    d["services"]["gateway"]["depends_on"]["dcm4chee"] = {"condition": "service_started"}


def _dcm4chee_default_network(d: dict[str, Any]) -> None:
    del d["services"]["dcm4chee-db"]["networks"]


DCM4CHEE_PLANTS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "dcm4chee-published": (_dcm4chee_published, "dcm4chee publishes"),
    "ldap-joins-gateway-side": (_ldap_on_gateway_side, "dcm4chee-ldap joins ['dcm4chee']"),
    "orthanc-reaches-dcm4chee": (_orthanc_reaches_dcm4chee, "orthanc joins ['dcm4chee']"),
    "stores-routable": (_dcm4chee_stores_routable, "network dcm4chee-stores is not internal"),
    "ldap-no-healthcheck": (_dcm4chee_no_healthcheck, "dcm4chee-ldap has no healthcheck"),
    "ldap-literal-password": (_ldap_password_may_be_unset, "secret LDAP_ROOTPASS"),
    "base-image-untagged": (_dcm4chee_base_untagged, "image 'dcm4che/dcm4chee-arc-psql'"),
    "db-writable-root": (_dcm4chee_writable, "dcm4chee-db: root filesystem not read-only"),
    "gateway-does-not-wait": (_gateway_does_not_wait, "gateway does not wait for dcm4chee"),
    "db-on-default-network": (_dcm4chee_default_network, "dcm4chee-db joins the default"),
}


@pytest.mark.control("NW-3")
@pytest.mark.parametrize("plant", sorted(DCM4CHEE_PLANTS))
def test_rules_fail_on_a_planted_mistake_with_dcm4chee(plant: str) -> None:
    mutate, symptom = DCM4CHEE_PLANTS[plant]
    data = with_dcm4chee()
    mutate(data)
    found = rule_violations(data)
    assert any(symptom in v for v in found), found


# ------------------------------------------------------------------ dcm4chee as rendered


def test_dcm4chee_gateway_settings_are_the_dicomweb_adapter_at_its_root(env_file: Path) -> None:
    base = env_file.parent / "compose"
    ours = yaml.safe_load((base / "gateway-dcm4chee" / "settings.yaml").read_text())
    theirs = yaml.safe_load((base / "gateway" / "settings.yaml").read_text())
    assert ours["archive"].pop("kind") == "dicomweb"
    assert ours["archive"].pop("url") == "https://dcm4chee:8443/dcm4chee-arc/aets/DCM4CHEE/rs"
    assert theirs["archive"].pop("kind", "orthanc") == "orthanc"
    theirs["archive"].pop("url")
    assert ours == theirs  # everything else, the pinned client certificate included, is the same
    for name in ("policy.yaml", "ingest-rules.yaml"):
        assert (base / "gateway-dcm4chee" / name).read_bytes() == (
            base / "gateway" / name
        ).read_bytes()


def test_dcm4chee_stores_hold_its_server_key_and_trust_only_the_gateway(env_file: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import pkcs12

    run = env_file.parent
    env = dict(ln.split("=", 1) for ln in env_file.read_text().splitlines() if "=" in ln)
    password = env["ZT_DCM4CHEE_KEYSTORE_PASSWORD"].encode()
    tls = run / "compose" / "dcm4chee" / "tls"
    key = pkcs12.load_pkcs12((tls / "key.p12").read_bytes(), password)
    assert key.key is not None and key.cert is not None
    cert = key.cert.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "dcm4chee" in san.get_values_for_type(x509.DNSName)
    ca = x509.load_pem_x509_certificate((run / "pki" / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    trust = pkcs12.load_pkcs12((tls / "trust.p12").read_bytes(), password)
    assert trust.key is None and trust.cert is None
    pinned = x509.load_pem_x509_certificate((run / "pki" / "gateway-client.pem").read_bytes())
    assert [c.certificate for c in trust.additional_certs] == [pinned]
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12((tls / "key.p12").read_bytes(), b"wrong")


def test_make_up_adds_the_override_only_when_asked(
    env_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run = RunDir.at(tmp_path)
    monkeypatch.delenv("ZT_COMPOSE_ARCHIVE", raising=False)
    assert str(DCM4CHEE) not in compose.command(run, "up")
    monkeypatch.setenv("ZT_COMPOSE_ARCHIVE", "dcm4chee")
    cmd = compose.command(run, "up")
    assert cmd[cmd.index(str(COMPOSE)) + 1 : cmd.index(str(DCM4CHEE)) + 1] == ["-f", str(DCM4CHEE)]
    # `down` (and every later command) follows what `up` recorded, not the environment.
    compose.archive_marker(run).parent.mkdir(parents=True)
    compose.archive_marker(run).write_text("orthanc\n")
    assert str(DCM4CHEE) not in compose.command(run, "down")
    monkeypatch.setenv("ZT_COMPOSE_ARCHIVE", "pacs")
    with pytest.raises(compose.StackError):
        compose.chosen_archive()


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


def test_dcm4chee_images_are_the_dockerfiles() -> None:
    services = raw(DCM4CHEE)["services"]
    for name, arg in (("dcm4chee", "DCM4CHEE_IMAGE"), ("dcm4chee-ldap", "SLAPD_IMAGE")):
        svc = services[name]
        base = svc["build"]["args"][arg]
        dockerfile = (DCM4CHEE.parent / svc["build"]["context"] / "Dockerfile").read_text()
        assert f"ARG {arg}={base}" in dockerfile
        assert svc["image"].rsplit(":", 1)[1] == base.rsplit(":", 1)[1]  # same version


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
