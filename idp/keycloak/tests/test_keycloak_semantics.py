"""The Keycloak import, checked against Keycloak's own types and the realm's security rules.

- `tsc --noEmit --strict` against `RealmRepresentation` from `@keycloak/keycloak-admin-client`
  (idp/keycloak/typecheck/, the same version as the pinned image; the local overrides are listed
  in realm-import.ts), and a planted `"publicClient": "yes"` or unknown field fails it;
- PKCE S256, no implicit or password grant, exact redirect URIs and web origins, DPoP-bound
  tokens for the CLI, the `acr`/roles/groups mappers, the WebAuthn policies;
- lockout, step-up age, events and signing keys aligned with idp/realm.yaml, config/policy.yaml
  and docs/identity.md.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

HERE = Path(__file__).resolve().parent
KEYCLOAK = HERE.parent
TYPECHECK = KEYCLOAK / "typecheck"
IMPORT_FILE = KEYCLOAK / "realm-dicomweb.json"
REALM_YAML = KEYCLOAK.parent / "realm.yaml"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("zt_kc_gen_sem", KEYCLOAK / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


@pytest.fixture(scope="module")
def kc() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(IMPORT_FILE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def realm() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(REALM_YAML.read_text(encoding="utf-8"))
    return data


def _clients(kc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["clientId"]: c for c in kc["clients"]}


# ------------------------------------------------------------------ Keycloak's own types


def _tsc(workdir: Path) -> subprocess.CompletedProcess[str]:
    tsc = TYPECHECK / "node_modules" / ".bin" / "tsc"
    assert tsc.exists(), "run `make bootstrap` (npm ci in idp/keycloak/typecheck)"
    return subprocess.run(
        [str(tsc), "-p", str(workdir)], capture_output=True, text=True, timeout=180, check=False
    )


def _planted_copy(tmp_path: Path, realm: dict[str, Any]) -> Path:
    """realm-import.ts and tsconfig.json beside a changed import, as in the repository."""
    work = tmp_path / "typecheck"
    work.mkdir()
    for name in ("realm-import.ts", "tsconfig.json"):
        shutil.copy(TYPECHECK / name, work / name)
    (work / "node_modules").symlink_to(TYPECHECK / "node_modules")
    (tmp_path / IMPORT_FILE.name).write_text(json.dumps(realm), encoding="utf-8")
    return work


def test_import_type_checks_against_keycloak_realm_representation() -> None:
    done = _tsc(TYPECHECK)
    assert done.returncode == 0, done.stdout + done.stderr
    pkg = json.loads((TYPECHECK / "package.json").read_text(encoding="utf-8"))
    assert pkg["devDependencies"]["@keycloak/keycloak-admin-client"] == GEN.KEYCLOAK_VERSION


def _public_yes(kc: dict[str, Any]) -> None:
    kc["clients"][0]["publicClient"] = "yes"


def _unknown_field(kc: dict[str, Any]) -> None:
    kc["clients"][1]["pkceMethod"] = "S256"  # Keycloak's field is an attribute


def _unknown_realm_field(kc: dict[str, Any]) -> None:
    kc["bruteForceProtection"] = True


@pytest.mark.parametrize(
    "plant, error",
    [(_public_yes, "TS2322"), (_unknown_field, "pkceMethod"), (_unknown_realm_field, "TS2344")],
    ids=["publicClient-yes", "unknown-client-field", "unknown-realm-field"],
)
def test_type_check_fails_on_a_planted_mistake(
    tmp_path: Path, kc: dict[str, Any], plant: Any, error: str
) -> None:
    planted = json.loads(json.dumps(kc))
    plant(planted)
    done = _tsc(_planted_copy(tmp_path, planted))
    assert done.returncode != 0
    assert error in done.stdout, done.stdout


# ------------------------------------------------------------------ clients


@pytest.mark.control("ID-9")
def test_public_clients_pkce_s256_no_implicit_no_password_grant(kc: dict[str, Any]) -> None:
    for c in kc["clients"]:
        assert c["implicitFlowEnabled"] is False, c["clientId"]
        assert c["directAccessGrantsEnabled"] is False, c["clientId"]
        assert c["attributes"]["oauth2.device.authorization.grant.enabled"] == "false"
        assert c["attributes"]["oidc.ciba.grant.enabled"] == "false"
        assert c["attributes"]["standard.token.exchange.enabled"] == "false"
        if c["publicClient"]:
            assert c["attributes"]["pkce.code.challenge.method"] == "S256", c["clientId"]
            assert c["standardFlowEnabled"] is True and c["serviceAccountsEnabled"] is False
        elif c["clientId"] == "emr-simulator":
            # A confidential web client (issue 19): code + PKCE S256 and private_key_jwt.
            assert c["clientAuthenticatorType"] == "client-jwt"
            assert c["attributes"]["pkce.code.challenge.method"] == "S256"
            assert c["standardFlowEnabled"] is True and c["serviceAccountsEnabled"] is False
        else:
            assert c["clientAuthenticatorType"] == "client-jwt", c["clientId"]
            assert c["standardFlowEnabled"] is False, c["clientId"]


def _placeholders(uri: str) -> str:
    return uri.replace("${GATEWAY_URL}", "https://gw.example").replace(
        "${EMR_URL}", "https://emr.example"
    )


def test_redirect_uris_and_web_origins_are_exact(kc: dict[str, Any], realm: dict[str, Any]) -> None:
    clients = _clients(kc)
    for cid, want in realm["clients"].items():
        c = clients[cid]
        assert c["redirectUris"] == want["redirect_uris"], cid
        assert c["webOrigins"] == (want.get("web_origins") or []), cid
        for uri in c["redirectUris"]:
            parts = urlsplit(_placeholders(uri))
            assert "*" not in uri and parts.scheme and parts.netloc and parts.path, (cid, uri)
            assert not parts.query and not parts.fragment, (cid, uri)
        for origin in c["webOrigins"]:
            assert origin not in ("*", "+", "-") and "*" not in origin, (cid, origin)
            parts = urlsplit(_placeholders(origin))
            assert parts.scheme == "https" and parts.path == "", (cid, origin)
        if not c["publicClient"] and "authorization_code" not in want["grant_types"]:
            assert c["redirectUris"] == [] and c["webOrigins"] == [], cid


@pytest.mark.control("ID-5")
def test_the_cli_gets_dpop_bound_tokens_and_only_it(
    kc: dict[str, Any], realm: dict[str, Any]
) -> None:
    for cid, c in _clients(kc).items():
        want = bool(realm["clients"][cid].get("dpop_required"))
        assert c["attributes"]["dpop.bound.access.tokens"] == str(want).lower(), cid
    assert _clients(kc)["dicomweb-cli"]["attributes"]["dpop.bound.access.tokens"] == "true"


def test_acr_roles_groups_mappers_write_the_access_token(kc: dict[str, Any]) -> None:
    for c in kc["clients"]:
        if not c["standardFlowEnabled"]:
            continue
        mappers = {m["protocolMapper"]: m["config"] for m in c["protocolMappers"]}
        assert mappers["oidc-acr-mapper"]["access.token.claim"] == "true"
        roles = mappers["oidc-usermodel-realm-role-mapper"]
        assert roles["claim.name"] == "realm_access.roles" and roles["access.token.claim"] == "true"
        groups = mappers["oidc-group-membership-mapper"]
        assert groups["claim.name"] == "groups" and groups["full.path"] == "true"
        assert groups["access.token.claim"] == "true"
        assert c["fullScopeAllowed"] is False  # roles only through the scope mappings


@pytest.mark.control("ID-3")
def test_webauthn_policies_second_factor_and_passwordless(
    kc: dict[str, Any], realm: dict[str, Any]
) -> None:
    for prefix in ("webAuthnPolicy", "webAuthnPolicyPasswordless"):
        assert kc[f"{prefix}UserVerificationRequirement"] == "required"
        assert kc[f"{prefix}SignatureAlgorithms"] == ["ES256"]
        assert kc[f"{prefix}AttestationConveyancePreference"] == realm["webauthn"]["attestation"]
        assert kc[f"{prefix}AcceptableAaguids"] == realm["webauthn"]["aaguid_allow_list"]
    assert kc["webAuthnPolicyPasswordlessRequireResidentKey"] == "Yes"


# ------------------------------------------------------------------ realm settings


@pytest.mark.control("ID-10")
def test_lockout_follows_the_realm_as_far_as_keycloak_allows(
    kc: dict[str, Any], realm: dict[str, Any]
) -> None:
    bf = realm["brute_force"]
    assert kc["bruteForceProtected"] is True and kc["permanentLockout"] is False
    assert kc["bruteForceStrategy"] in ("MULTIPLE", "LINEAR")
    assert kc["failureFactor"] == bf["max_failures"]
    # The first lockout lasts the realm's lockout (not Keycloak's 60 s default) and no longer.
    assert kc["waitIncrementSeconds"] == kc["maxFailureWaitSeconds"] == bf["lockout_seconds"]
    assert kc["maxDeltaTimeSeconds"] == bf["failure_window_seconds"]
    assert kc["otpPolicyCodeReusable"] is False


@pytest.mark.control("ID-4")
def test_step_up_age_is_the_gateways(kc: dict[str, Any], realm: dict[str, Any]) -> None:
    policy = yaml.safe_load((KEYCLOAK.parents[1] / "config" / "policy.yaml").read_text())
    fresh = min(r["max_age"] for r in policy["step_up"] if r.get("max_age"))
    configs = {c["alias"]: c["config"] for c in kc["authenticatorConfig"]}
    for level in realm["acr_levels"]:
        loa = level["loa"]
        want = realm["tokens"]["session_lifetime_seconds"] if loa == 1 else fresh
        assert configs[f"zt-loa{loa}-condition"]["loa-max-age"] == str(want), loa
        for alias, config in configs.items():
            if alias.startswith(f"zt-loa{loa}-") and alias.endswith("-amr"):
                assert config["default.reference.maxAge"] == str(want), alias


def test_events_keys_and_version(kc: dict[str, Any]) -> None:
    assert kc["eventsEnabled"] is True and kc["adminEventsEnabled"] is True
    assert kc["adminEventsDetailsEnabled"] is True and kc["eventsListeners"] == ["jboss-logging"]
    keys = {k["providerId"]: k["config"] for k in kc["components"]["org.keycloak.keys.KeyProvider"]}
    assert keys["ecdsa-generated"]["ecdsaEllipticCurveKey"] == ["P-256"]
    assert keys["ecdsa-generated"]["active"] == ["true"]
    assert kc["defaultSignatureAlgorithm"] == "ES256"
    assert tuple(int(p) for p in GEN.KEYCLOAK_VERSION.split(".")) >= (26, 2)
    dynamic = [s for s in kc["clientScopes"] if s["attributes"].get("is.dynamic.scope") == "true"]
    assert not dynamic or "dynamic-scopes" in GEN.KEYCLOAK_FEATURES
