"""The Keycloak import agrees with the local provider and is up to date with the generator.

The local provider's effective configuration comes from the provider itself
(`node idp/local/effective-config.js`), so this compares what both identity providers would
actually enforce: clients, redirect URIs, web origins, scopes, roles, groups, users, acr levels.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
KEYCLOAK = HERE.parent
IDP = KEYCLOAK.parent
IMPORT_FILE = KEYCLOAK / "realm-dicomweb.json"
GATEWAY = "https://localhost:8443"
FACTOR_OF = {
    "auth-username-password-form": "password",
    "auth-otp-form": "otp",
    "webauthn-authenticator": "webauthn",
}
ACTION_FACTOR = {"CONFIGURE_TOTP": "otp", "webauthn-register": "webauthn"}
# What Keycloak needs that the local provider has built in: the `basic` scope (sub, auth_time),
# the offline_access role and the realm's default role.
KEYCLOAK_SCOPES = {"basic"}
KEYCLOAK_ROLES = {"offline_access", "default-roles-dicomweb"}


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("zt_keycloak_generate", KEYCLOAK / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def local() -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "Node.js is required (make bootstrap)"
    out = subprocess.run(
        [node, str(IDP / "local" / "effective-config.js"), str(IDP / "realm.yaml"), GATEWAY],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, f"effective-config.js failed: {out.stderr}"
    data: dict[str, Any] = json.loads(out.stdout)
    return data


@pytest.fixture(scope="module")
def keycloak() -> dict[str, Any]:
    text = IMPORT_FILE.read_text(encoding="utf-8").replace("${GATEWAY_URL}", GATEWAY)
    text = text.replace("${EMR_URL}", "https://localhost:8444")  # the local IdP's default
    data: dict[str, Any] = json.loads(text)
    return data


def _grant_types(c: dict[str, Any]) -> list[str]:
    grants = []
    if c["standardFlowEnabled"]:
        grants.append("authorization_code")
    if c["attributes"].get("use.refresh.tokens") == "true":
        grants.append("refresh_token")
    if c["serviceAccountsEnabled"]:
        grants.append("client_credentials")
    return sorted(grants)


def _scopes(c: dict[str, Any], dynamic: set[str]) -> list[str]:
    names = c["defaultClientScopes"] + c["optionalClientScopes"]
    return sorted(f"{n}:*" if n in dynamic else n for n in names if n not in KEYCLOAK_SCOPES)


def _group_paths(groups: list[dict[str, Any]]) -> list[str]:
    paths: list[str] = []
    for g in groups:
        paths.append(g["path"])
        paths.extend(_group_paths(g.get("subGroups", [])))
    return paths


def test_import_is_up_to_date_with_the_generator() -> None:
    assert IMPORT_FILE.read_text(encoding="utf-8") == _generator().render(), (
        "run: .venv/bin/python idp/keycloak/generate.py"
    )


def test_clients_agree(local: dict[str, Any], keycloak: dict[str, Any]) -> None:
    dynamic = {
        s["name"] for s in keycloak["clientScopes"]
        if s["attributes"].get("is.dynamic.scope") == "true"
    }  # fmt: skip
    kc = {c["clientId"]: c for c in keycloak["clients"]}
    assert set(kc) == set(local["clients"])
    for cid, want in local["clients"].items():
        c = kc[cid]
        assert c["publicClient"] == want["public"], cid
        assert _grant_types(c) == want["grant_types"], cid
        assert sorted(c["redirectUris"]) == want["redirect_uris"], cid
        assert sorted(c["webOrigins"]) == want["web_origins"], cid
        kc_scopes = _scopes(c, dynamic)
        want_scopes = [s for s in want["scopes"] if s != "openid"]
        assert [s for s in kc_scopes if s != "openid"] == want_scopes, cid
        assert c["attributes"].get("pkce.code.challenge.method") == want["pkce"], cid
        assert (c["attributes"]["dpop.bound.access.tokens"] == "true") == want["dpop_required"]
        auth = (
            "none"
            if c["publicClient"]
            else {"client-jwt": "private_key_jwt"}.get(c["clientAuthenticatorType"])
        )
        assert auth == want["client_authentication"], cid


def test_roles_groups_and_users_agree(local: dict[str, Any], keycloak: dict[str, Any]) -> None:
    roles = {r["name"] for r in keycloak["roles"]["realm"]}
    assert sorted(roles - KEYCLOAK_ROLES) == local["roles"]
    assert sorted(_group_paths(keycloak["groups"])) == local["groups"]
    kc = {u["username"]: u for u in keycloak["users"]}
    assert set(kc) == set(local["users"])
    for name, want in local["users"].items():
        u = kc[name]
        assert sorted(set(u["realmRoles"]) - KEYCLOAK_ROLES) == want["roles"], name
        assert sorted(u["groups"]) == want["groups"], name
        assert sorted(ACTION_FACTOR[a] for a in u["requiredActions"]) == want["factors"], name
        assert u.get("attributes", {}).get("patient", [None])[0] == want["patient"], name


def test_scopes_agree(local: dict[str, Any], keycloak: dict[str, Any]) -> None:
    names = []
    for s in keycloak["clientScopes"]:
        if s["name"] in KEYCLOAK_SCOPES:
            continue
        dynamic = s["attributes"].get("is.dynamic.scope") == "true"
        if dynamic:
            assert s["attributes"]["dynamic.scope.regexp"] == f"{s['name']}:*"
        names.append(f"{s['name']}:*" if dynamic else s["name"])
    assert sorted(["openid", *names]) == local["scopes"]


def test_acr_levels_agree(local: dict[str, Any], keycloak: dict[str, Any]) -> None:
    loa_map = json.loads(keycloak["attributes"]["acr.loa.map"])
    assert loa_map == {lv["acr"]: lv["loa"] for lv in local["acr_levels"]}
    assert keycloak["browserFlow"] == "zt-browser"
    flows = {f["alias"]: f for f in keycloak["authenticationFlows"]}
    configs = {c["alias"]: c["config"] for c in keycloak["authenticatorConfig"]}
    levels = flows["zt-browser-levels"]["authenticationExecutions"]
    assert all(e["requirement"] == "CONDITIONAL" for e in levels)
    seen: set[str] = set()
    for execution, level in zip(levels, local["acr_levels"], strict=True):
        steps = flows[execution["flowAlias"]]["authenticationExecutions"]
        condition = steps[0]
        assert condition["authenticator"] == "conditional-level-of-authentication"
        assert configs[condition["authenticatorConfig"]]["loa-condition-level"] == str(level["loa"])
        added = [FACTOR_OF[s["authenticator"]] for s in steps[1:]]
        # Keycloak's level flows are cumulative; each adds the factor that defines its level.
        assert added[-1] == level["factors"][-1]
        assert set(level["factors"]) <= seen | set(added)
        seen |= set(added)


def test_tokens_agree(local: dict[str, Any], keycloak: dict[str, Any]) -> None:
    assert keycloak["accessTokenLifespan"] == local["access_token_lifetime_seconds"] <= 300
    assert keycloak["revokeRefreshToken"] is True and keycloak["refreshTokenMaxReuse"] == 0
    for c in keycloak["clients"]:
        if c["bearerOnly"]:
            continue
        assert c["attributes"]["access.token.header.type.rfc9068"] == "true", c["clientId"]
        audiences = [
            m["config"]["included.custom.audience"] for m in c["protocolMappers"]
            if m["protocolMapper"] == "oidc-audience-mapper"
        ]  # fmt: skip
        assert audiences == [local["audience"]], c["clientId"]


def test_hardening_no_implicit_no_password_grant_no_wildcards_no_secrets() -> None:
    raw = IMPORT_FILE.read_text(encoding="utf-8")
    realm = json.loads(raw)
    for c in realm["clients"]:
        assert c["implicitFlowEnabled"] is False and c["directAccessGrantsEnabled"] is False
        for uri in c["redirectUris"] + c["webOrigins"]:
            assert "*" not in uri and uri not in ("+", "/"), (c["clientId"], uri)
        assert "secret" not in c, c["clientId"]
        if not c["publicClient"]:
            assert re.fullmatch(r"\$\{[A-Z0-9_]+\}", c["attributes"]["jwks.string"])
    for u in realm["users"]:
        for cred in u["credentials"]:
            assert re.fullmatch(r"\$\{[A-Z0-9_]+\}", cred["value"]), u["username"]
    assert "BEGIN" not in raw and '"d":' not in raw  # no key material of any kind
