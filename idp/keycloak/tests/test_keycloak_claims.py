"""The claims Keycloak will put in each client's tokens, derived from the import, meet the gateway.

No Keycloak runs here, so this derives every access token the realm can issue (each user at each
level they can reach, through each user-facing client; each device through client credentials)
from `realm-dicomweb.json` and Keycloak 26's documented semantics, then checks each against what
the gateway requires (services/gateway/src/dicomweb_gateway/authenticate.py: `typ` at+jwt, `sub`,
`client_id`, `jti`, `aud`; policy: roles, groups, `acr`, `amr`, `auth_time`, `patient`).

The semantics (Keycloak 26 source, read for this test):
- an import that defines `clientScopes` gets none of Keycloak's built-in scopes (`basic` with
  the `sub` mapper among them; keycloak/keycloak#31082);
- a token's mappers are the client's own plus those of its default scopes and of the optional
  scopes it asked for; a mapper writes into the access token when `access.token.claim` is true;
- `oidc-usersessionmodel-note-mapper` on note `client_id` finds it only in service-account and
  token-exchange sessions;
- with `fullScopeAllowed: false` a token carries only the user's (composite-expanded) roles that
  a scope mapping of the client or of a scope in effect names;
- imported users hold exactly the `realmRoles` listed (no default role); `offline_access` is
  refused unless the role `offline_access` reaches the token;
- `oidc-amr-mapper` emits the `default.reference.value` of each completed execution whose
  authenticator config has it, while `default.reference.maxAge` (absent = 0) has not run out;
- the `typ: at+jwt` header needs the client attribute `access.token.header.type.rfc9068`
  (Keycloak 26.2 or later); otherwise `typ` is `JWT`.
Each of the six findings of issue 16 is planted back and must be caught.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
KEYCLOAK = HERE.parent
IMPORT_FILE = KEYCLOAK / "realm-dicomweb.json"
REALM_YAML = KEYCLOAK.parent / "realm.yaml"
GATEWAY = "https://gateway.example"
USER_SCOPE = "openid offline_access user/ImagingStudy.rs study:1.2.3"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("zt_kc_gen_claims", KEYCLOAK / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def load_import() -> dict[str, Any]:
    text = IMPORT_FILE.read_text(encoding="utf-8").replace("${GATEWAY_URL}", GATEWAY)
    data: dict[str, Any] = json.loads(text)
    return data


def source_realm() -> dict[str, Any]:
    text = REALM_YAML.read_text(encoding="utf-8").replace("${GATEWAY_URL}", GATEWAY)
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


# ------------------------------------------------------------------ Keycloak's semantics


def _scopes_in_effect(kc: dict[str, Any], client: dict[str, Any], asked: list[str]) -> list[dict]:
    defined = {s["name"]: s for s in kc.get("clientScopes", [])}
    dynamic = {
        n for n, s in defined.items()
        if s.get("attributes", {}).get("is.dynamic.scope") == "true"
        and "dynamic-scopes" in GEN.KEYCLOAK_FEATURES
    }  # fmt: skip
    names = list(client.get("defaultClientScopes", []))
    for a in asked:
        base = a.split(":", 1)[0] if ":" in a and a.split(":", 1)[0] in dynamic else a
        if base in client.get("optionalClientScopes", []):
            names.append(base)
    return [defined[n] for n in names if n in defined]


def _effective_roles(kc: dict[str, Any], names: list[str]) -> set[str]:
    composites = {
        r["name"]: r.get("composites", {}).get("realm", [])
        for r in kc.get("roles", {}).get("realm", [])
    }
    out: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in composites and name not in out:
            out.add(name)
            todo.extend(composites[name])
    return out


def _role_scope(kc: dict[str, Any], client: dict[str, Any], scopes: list[dict]) -> set[str] | None:
    if client.get("fullScopeAllowed", True):
        return None  # every role
    names = {s["name"] for s in scopes}
    allowed: set[str] = set()
    for m in kc.get("scopeMappings", []):
        if m.get("client") == client["clientId"] or m.get("clientScope") in names:
            allowed |= _effective_roles(kc, m.get("roles", []))
    return allowed


def _executions_for_level(kc: dict[str, Any], loa: int) -> list[dict[str, Any]]:
    """The factor executions of the browser flow that run for a login at level `loa`."""
    flows = {f["alias"]: f for f in kc.get("authenticationFlows", [])}
    configs = {c["alias"]: c.get("config", {}) for c in kc.get("authenticatorConfig", [])}
    done: list[dict[str, Any]] = []
    levels = flows[kc["browserFlow"]]["authenticationExecutions"][1]["flowAlias"]
    for step in flows[levels]["authenticationExecutions"]:
        sub = flows[step["flowAlias"]]["authenticationExecutions"]
        condition = configs[sub[0]["authenticatorConfig"]]
        if int(condition["loa-condition-level"]) <= loa:
            done.extend(sub[1:])
    return done


def _amr(kc: dict[str, Any], loa: int) -> list[str]:
    configs = {c["alias"]: c.get("config", {}) for c in kc.get("authenticatorConfig", [])}
    out = []
    for execution in _executions_for_level(kc, loa):
        config = configs.get(execution.get("authenticatorConfig", ""), {})
        value = config.get("default.reference.value")
        if value and int(config.get("default.reference.maxAge", "0")) > 0:
            out.append(value)
    return out


class Refused(Exception):
    """Keycloak would refuse the token request."""


def derive(
    kc: dict[str, Any],
    client_id: str,
    *,
    user: str | None,
    scope: str,
    acr: str | None = None,
    version: str = GEN.KEYCLOAK_VERSION,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of the access token Keycloak would issue."""
    client = next(c for c in kc["clients"] if c["clientId"] == client_id)
    asked = scope.split()
    scopes = _scopes_in_effect(kc, client, asked)
    mappers = list(client.get("protocolMappers", []))
    for s in scopes:
        mappers.extend(s.get("protocolMappers", []))
    mappers = [m for m in mappers if m.get("config", {}).get("access.token.claim") == "true"]
    if user is None:  # a service account: its user holds the realm's default role
        account: dict[str, Any] = {"username": f"service-account-{client_id}", "groups": []}
        held = [kc.get("defaultRole", {}).get("name", "")]
    else:
        account = next(u for u in kc["users"] if u["username"] == user)
        held = account.get("realmRoles", [])
    allowed = _role_scope(kc, client, scopes)
    roles = _effective_roles(kc, held)
    if allowed is not None:
        roles &= allowed
    if "offline_access" in asked and "offline_access" not in roles:
        raise Refused("offline tokens not allowed for the user or client")
    loa_map = json.loads(kc.get("attributes", {}).get("acr.loa.map", "{}"))
    loa = loa_map.get(acr, 1) if acr else min(loa_map.values(), default=1)
    claims: dict[str, Any] = {
        "iss": f"{GATEWAY}/realms/{kc['realm']}",
        "jti": "derived",
        "exp": 1,
        "iat": 0,
        "azp": client_id,
        "scope": " ".join(
            ["openid"] * ("openid" in asked)
            + [s["name"] for s in scopes if s["attributes"].get("include.in.token.scope") == "true"]
        ),
    }
    for m in mappers:
        kind, config = m["protocolMapper"], m.get("config", {})
        if kind == "oidc-sub-mapper":
            claims["sub"] = f"uuid-of-{account['username']}"
        elif kind == "oidc-hardcoded-claim-mapper":
            claims[config["claim.name"]] = config["claim.value"]
        elif kind == "oidc-usersessionmodel-note-mapper":
            note = config["user.session.note"]
            if note == "client_id" and user is None:
                claims[config["claim.name"]] = client_id
            elif note == "AUTH_TIME":
                claims[config["claim.name"]] = 0
        elif kind == "oidc-audience-mapper":
            claims.setdefault("aud", []).append(config["included.custom.audience"])
        elif kind == "oidc-usermodel-realm-role-mapper" and roles:
            claims["realm_access"] = {"roles": sorted(roles)}
        elif kind == "oidc-group-membership-mapper" and account.get("groups"):
            claims[config["claim.name"]] = sorted(account["groups"])
        elif kind == "oidc-usermodel-attribute-mapper":
            value = account.get("attributes", {}).get(config["user.attribute"])
            if value:
                claims[config["claim.name"]] = value[0]
        elif kind == "oidc-acr-mapper" and user is not None:
            claims["acr"] = next((a for a, n in loa_map.items() if n == loa), str(loa))
        elif kind == "oidc-amr-mapper" and user is not None:
            claims["amr"] = _amr(kc, loa)
    rfc9068 = client.get("attributes", {}).get("access.token.header.type.rfc9068") == "true"
    typ = "at+jwt" if rfc9068 and _version(version) >= (26, 2) else "JWT"
    return {"alg": client["attributes"].get("access.token.signed.response.alg"), "typ": typ}, claims


# ------------------------------------------------------------------ what the gateway requires


def gateway_problems(kc: dict[str, Any], version: str = GEN.KEYCLOAK_VERSION) -> list[str]:
    """Every way a token derived from the import would be refused or under-privileged."""
    realm = source_realm()
    levels = realm["acr_levels"]
    problems: list[str] = []

    def check(who: str, header: dict[str, Any], claims: dict[str, Any]) -> None:
        if header["typ"] != "at+jwt":
            problems.append(f"{who}: typ {header['typ']!r}, the gateway wants at+jwt")
        if header["alg"] != "ES256":
            problems.append(f"{who}: alg {header['alg']!r}")
        for name in ("sub", "client_id", "jti"):
            if not claims.get(name):
                problems.append(f"{who}: no {name}")
        if GATEWAY not in claims.get("aud", []):
            problems.append(f"{who}: aud {claims.get('aud')!r} misses the gateway")

    for cid, c in realm["clients"].items():
        if "client_credentials" in c["grant_types"]:
            scope = " ".join(s.replace(":*", ":1.2.3") for s in c["scopes"])
            header, claims = derive(kc, cid, user=None, scope=scope, version=version)
            check(cid, header, claims)
            if claims.get("client_id") not in (None, cid):
                problems.append(f"{cid}: client_id {claims['client_id']!r}")
        if "authorization_code" not in c["grant_types"]:
            continue
        # A client without refresh tokens (the EMR simulator) never asks for offline_access.
        asked = USER_SCOPE
        if "refresh_token" not in c["grant_types"]:
            asked = USER_SCOPE.replace("offline_access ", "")
        for name, u in realm["users"].items():
            factors = {"password", *u["factors"]}
            for level in levels:
                if not set(level["factors"]) <= factors:
                    continue
                who = f"{cid}/{name}/{level['acr']}"
                try:
                    header, claims = derive(
                        kc, cid, user=name, scope=asked, acr=level["acr"], version=version
                    )
                except Refused as e:
                    problems.append(f"{who}: {e}")
                    online = USER_SCOPE.replace("offline_access ", "")
                    header, claims = derive(
                        kc, cid, user=name, scope=online, acr=level["acr"], version=version
                    )
                check(who, header, claims)
                roles = set(claims.get("realm_access", {}).get("roles", []))
                if not set(u["roles"]) <= roles:
                    problems.append(f"{who}: roles {sorted(roles)} miss {sorted(u['roles'])}")
                if sorted(claims.get("groups", [])) != sorted(u["groups"]):
                    problems.append(f"{who}: groups {claims.get('groups')!r}")
                if claims.get("acr") != level["acr"]:
                    problems.append(f"{who}: acr {claims.get('acr')!r}")
                # Keycloak's levels are cumulative (level 3 also ran the OTP of level 2) and it
                # emits one value per factor (no `mfa`/`user`): every factor of the level, and
                # nothing beyond the factors of the levels up to it.
                amr = claims.get("amr") or []
                want = {GEN.AMR_OF[f] for f in level["factors"]}
                upto = {GEN.AMR_OF[f] for lv in levels[: levels.index(level) + 1]
                        for f in lv["factors"]}  # fmt: skip
                if not want <= set(amr) <= upto:
                    problems.append(
                        f"{who}: amr {amr!r}, want {sorted(want)} <= amr <= {sorted(upto)}"
                    )
                if "auth_time" not in claims:
                    problems.append(f"{who}: no auth_time (step-up freshness)")
                if claims.get("patient") != u.get("patient"):
                    problems.append(f"{who}: patient {claims.get('patient')!r}")
                if "study" not in claims["scope"]:
                    problems.append(f"{who}: scope {claims['scope']!r} lost study:<uid>")
    return problems


# ------------------------------------------------------------------ the six findings, planted


def _drop_basic(kc: dict[str, Any]) -> None:
    kc["clientScopes"] = [s for s in kc["clientScopes"] if s["name"] != "basic"]


def _client_id_from_session_note(kc: dict[str, Any]) -> None:
    for c in kc["clients"]:
        for m in c["protocolMappers"]:
            if m["name"] == "client_id":
                m["protocolMapper"] = "oidc-usersessionmodel-note-mapper"
                m["config"]["user.session.note"] = "client_id"
                del m["config"]["claim.value"]


def _no_scope_mappings(kc: dict[str, Any]) -> None:
    kc.pop("scopeMappings", None)


def _no_rfc9068_attribute(kc: dict[str, Any]) -> None:
    for c in kc["clients"]:
        c["attributes"].pop("access.token.header.type.rfc9068", None)


def _no_default_role(kc: dict[str, Any]) -> None:
    for u in kc["users"]:
        u["realmRoles"] = [r for r in u["realmRoles"] if not r.startswith("default-roles-")]


def _no_amr_reference(kc: dict[str, Any]) -> None:
    for c in kc["authenticatorConfig"]:
        c["config"].pop("default.reference.value", None)


PLANTED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "1-no-basic-scope-no-sub": (_drop_basic, "no sub"),
    "2-client-id-from-session-note": (_client_id_from_session_note, "no client_id"),
    "3-no-scope-mappings-no-roles": (_no_scope_mappings, "roles"),
    "4-no-rfc9068-attribute": (_no_rfc9068_attribute, "typ 'JWT'"),
    "5-no-default-role-offline-access": (_no_default_role, "offline tokens not allowed"),
    "6-no-default-reference-value-no-amr": (_no_amr_reference, "amr []"),
}


@pytest.mark.control("ID-1")
def test_every_derived_token_meets_the_gateway() -> None:
    assert gateway_problems(load_import()) == []


@pytest.mark.control("ID-1")
@pytest.mark.parametrize("finding", sorted(PLANTED))
def test_each_finding_planted_back_is_caught(finding: str) -> None:
    plant, symptom = PLANTED[finding]
    kc = copy.deepcopy(load_import())
    plant(kc)
    problems = gateway_problems(kc)
    assert problems, f"{finding}: planted, but no derived token changed"
    assert any(symptom in p for p in problems), problems[:5]


def test_an_older_keycloak_sends_typ_jwt() -> None:
    """The attribute exists from Keycloak 26.2 on: an older pin loses `typ: at+jwt`."""
    assert _version(GEN.KEYCLOAK_VERSION) >= (26, 2)
    problems = gateway_problems(load_import(), version="26.1.5")
    assert problems and all("typ 'JWT'" in p for p in problems)


def test_unknown_user_or_missing_offline_role_is_refused() -> None:
    kc = load_import()
    _, claims = derive(kc, "ohif-viewer", user="researcher", scope="openid user/ImagingStudy.rs")
    assert claims["scope"] == "openid profile user/ImagingStudy.rs"
    assert "offline_access" not in claims["realm_access"]["roles"]  # only when asked for
    _no_default_role(kc)
    with pytest.raises(Refused):
        derive(kc, "ohif-viewer", user="researcher", scope="openid offline_access")


def test_device_tokens_carry_no_user_roles() -> None:
    header, claims = derive(load_import(), "modality-ct1", user=None, scope="system/ImagingStudy.c")
    assert header["typ"] == "at+jwt"
    assert claims["client_id"] == "modality-ct1" and claims["sub"]
    assert claims.get("realm_access") is None and "acr" not in claims
