"""Generate the Keycloak 26 realm import from idp/realm.yaml (the single source of truth).

    .venv/bin/python idp/keycloak/generate.py          # writes idp/keycloak/realm-dicomweb.json
    .venv/bin/python idp/keycloak/generate.py --check  # exit 1 when the committed file is stale

The output holds no secret: the gateway origin, user passwords and the device clients' public
keys are `${...}` placeholders that Keycloak fills from its environment at import
(`kc.sh start --import-realm`); compose and the Kubernetes manifests refuse to start when one is
unset (Keycloak itself would abort on `${GATEWAY_URL}` but take an unset `${ZT_PASSWORD_*}` as
the literal password). TOTP and WebAuthn are enrolled at first login (required actions).

Pinned to Keycloak KEYCLOAK_VERSION (26.2 or later: `access.token.header.type.rfc9068`), started
with KEYCLOAK_FEATURES (`dynamic-scopes` for `study:*`). Because the file defines `clientScopes`,
Keycloak creates none of its built-in scopes on import: everything a token carries comes from the
scopes and mappers below (idp/keycloak/tests/test_keycloak_claims.py derives the claims).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REALM_YAML = HERE.parent / "realm.yaml"
POLICY_YAML = HERE.parent.parent / "config" / "policy.yaml"
OUTPUT = HERE / "realm-dicomweb.json"
# The Kubernetes base imports the same file (kustomize reads only files under its root).
DEPLOY_COPY = HERE.parent.parent / "deploy" / "base" / "realm-dicomweb.json"

# The one Keycloak version compose/ and deploy/ run (checked by their tests), and its flags.
KEYCLOAK_VERSION = "26.4.7"
KEYCLOAK_IMAGE = f"quay.io/keycloak/keycloak:{KEYCLOAK_VERSION}"
KEYCLOAK_FEATURES = ["dynamic-scopes"]
# Keycloak's own realm roles: the default role (composite) and offline_access.
DEFAULT_ROLE = "default-roles-{realm}"
OFFLINE_ACCESS = "offline_access"

# Which Keycloak authenticator proves which realm factor (browser flow executions).
AUTHENTICATORS = {
    "password": "auth-username-password-form",
    "otp": "auth-otp-form",
    "webauthn": "webauthn-authenticator",
}
REQUIRED_ACTIONS = {"otp": "CONFIGURE_TOTP", "webauthn": "webauthn-register"}
# RFC 8176 `amr` value of each factor: Keycloak's oidc-amr-mapper emits the
# `default.reference.value` of each completed execution's authenticator config.
AMR_OF = {"password": "pwd", "otp": "otp", "webauthn": "hwk"}
OIDC_SCOPES = {"openid", "profile", "offline_access"}


def env_name(*parts: str) -> str:
    return "_".join(p.upper().replace("-", "_").replace("/", "_") for p in parts)


def _mapper(name: str, mapper: str, config: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": "openid-connect",
        "protocolMapper": mapper,
        "consentRequired": False,
        "config": config,
    }


def _token_claims_mappers(cid: str, audience: str) -> list[dict[str, Any]]:
    """The RFC 9068 claims the gateway reads, as the local provider issues them (`sub` and
    `auth_time` come from the `basic` scope)."""
    token = {
        "access.token.claim": "true",
        "id.token.claim": "false",
        "introspection.token.claim": "true",
        "userinfo.token.claim": "false",
    }
    return [
        _mapper(
            "gateway audience",
            "oidc-audience-mapper",
            {"included.custom.audience": audience, **token},
        ),
        _mapper(
            "realm roles",
            "oidc-usermodel-realm-role-mapper",
            {
                "claim.name": "realm_access.roles",
                "multivalued": "true",
                "jsonType.label": "String",
                **token,
            },
        ),
        _mapper(
            "groups",
            "oidc-group-membership-mapper",
            {"claim.name": "groups", "full.path": "true", **token},
        ),
        _mapper(
            "patient",
            "oidc-usermodel-attribute-mapper",
            {
                "claim.name": "patient",
                "user.attribute": "patient",
                "jsonType.label": "String",
                **token,
            },
        ),
        # RFC 9068 2.2 `client_id`. Keycloak's session-note mapper sees the `client_id` note only
        # for service accounts and token exchange, so user tokens would lack it: a constant.
        _mapper(
            "client_id",
            "oidc-hardcoded-claim-mapper",
            {
                "claim.name": "client_id",
                "claim.value": cid,
                "jsonType.label": "String",
                **token,
            },
        ),
        _mapper("acr loa level", "oidc-acr-mapper", {"id.token.claim": "true", **token}),
        _mapper("amr", "oidc-amr-mapper", {"id.token.claim": "true", **token}),
    ]


def _basic_scope() -> dict[str, Any]:
    """Keycloak 25+ moved `sub` and `auth_time` into the built-in `basic` scope, which an import
    that defines `clientScopes` does not get (keycloak/keycloak#31082): define it here."""
    token = {"access.token.claim": "true", "introspection.token.claim": "true"}
    return {
        "name": "basic",
        "description": "sub and auth_time in every token",
        "protocol": "openid-connect",
        "attributes": {"include.in.token.scope": "false", "display.on.consent.screen": "false"},
        "protocolMappers": [
            _mapper("sub", "oidc-sub-mapper", token),
            _mapper(
                "auth_time",
                "oidc-usersessionmodel-note-mapper",
                {
                    "claim.name": "auth_time",
                    "user.session.note": "AUTH_TIME",
                    "jsonType.label": "long",
                    "id.token.claim": "true",
                    **token,
                },
            ),
        ],
    }


def _client(cid: str, c: dict[str, Any], realm: dict[str, Any]) -> dict[str, Any]:
    audience = realm["resource_servers"]["dicomweb-gateway"]["audience"]
    grants = set(c["grant_types"])
    attributes = {
        "access.token.header.type.rfc9068": "true",  # typ: at+jwt
        "access.token.signed.response.alg": realm["tokens"]["signing_algorithm"],
        "id.token.signed.response.alg": realm["tokens"]["signing_algorithm"],
        "dpop.bound.access.tokens": str(bool(c.get("dpop_required"))).lower(),
        "use.refresh.tokens": str("refresh_token" in grants).lower(),
        "client_credentials.use_refresh_token": "false",
        "oauth2.device.authorization.grant.enabled": "false",
        "oidc.ciba.grant.enabled": "false",
        "standard.token.exchange.enabled": "false",
        "post.logout.redirect.uris": "##".join(c.get("post_logout_redirect_uris") or []),
        "acr.loa.map": json.dumps({lv["acr"]: lv["loa"] for lv in realm["acr_levels"]}),
    }
    if c["public"] or c.get("pkce"):  # the EMR simulator: confidential and PKCE
        attributes["pkce.code.challenge.method"] = c.get("pkce", "S256")
    out: dict[str, Any] = {
        "clientId": cid,
        "name": c["name"],
        "enabled": True,
        "protocol": "openid-connect",
        "publicClient": bool(c["public"]),
        "bearerOnly": False,
        "standardFlowEnabled": "authorization_code" in grants,
        "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": False,  # no password grant
        "serviceAccountsEnabled": "client_credentials" in grants,
        "frontchannelLogout": False,
        "consentRequired": False,  # first-party clients only
        "fullScopeAllowed": False,
        "redirectUris": list(c["redirect_uris"]),
        "webOrigins": list(c.get("web_origins") or []),
        "attributes": attributes,
        "protocolMappers": _token_claims_mappers(cid, audience) if grants else [],
        "defaultClientScopes": sorted(
            ["basic"] * bool(grants) + [s for s in c["scopes"] if s in ("openid", "profile")]
        ),
        "optionalClientScopes": sorted(
            s.split(":")[0] if s.endswith(":*") else s
            for s in c["scopes"]
            if s not in ("openid", "profile")
        ),
    }
    if not c["public"]:
        out["clientAuthenticatorType"] = "client-jwt"  # private_key_jwt
        out["attributes"]["use.jwks.string"] = "true"
        out["attributes"]["jwks.string"] = "${" + env_name("ZT", cid, "JWKS") + "}"
        out["attributes"]["token.endpoint.auth.signing.alg"] = "ES256"
    if not grants:  # the gateway: a resource server, no flow at all
        out["bearerOnly"] = True
    return out


def _client_scopes(realm: dict[str, Any]) -> list[dict[str, Any]]:
    scopes: list[dict[str, Any]] = [_basic_scope()]
    for name in realm["scopes"]["oidc"]:
        if name == "openid":
            continue  # implicit in Keycloak
        scopes.append(
            {
                "name": name,
                "protocol": "openid-connect",
                "attributes": {"include.in.token.scope": "true"},
            }
        )
    for name, text in realm["scopes"]["resource"].items():
        scopes.append(
            {
                "name": name,
                "description": text,
                "protocol": "openid-connect",
                "attributes": {
                    "include.in.token.scope": "true",
                    "display.on.consent.screen": "false",
                },
            }
        )
    for name, p in realm["scopes"]["parameterized"].items():
        scopes.append(
            {
                "name": name,
                "description": p["description"],
                "protocol": "openid-connect",
                "attributes": {
                    "include.in.token.scope": "true",
                    "display.on.consent.screen": "false",
                    "is.dynamic.scope": "true",
                    "dynamic.scope.regexp": f"{name}:*",
                },
            }
        )
    return scopes


def step_up_max_age(policy_file: Path = POLICY_YAML) -> int:
    """The shortest `max_age` of the gateway's step-up rules: how long a second factor counts."""
    policy = yaml.safe_load(policy_file.read_text(encoding="utf-8"))
    ages = [int(r["max_age"]) for r in policy.get("step_up") or [] if r.get("max_age")]
    return min(ages)


def level_max_age(realm: dict[str, Any], loa: int) -> int:
    """Keycloak's `loa-max-age`: password for the session, every higher level only as long as
    the gateway's step-up window (a fresh second factor after that, as the gateway asks)."""
    first = realm["acr_levels"][0]["loa"]
    return int(realm["tokens"]["session_lifetime_seconds"]) if loa == first else step_up_max_age()


def _flows(realm: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Browser flow with one conditional sub-flow per level (Keycloak's step-up recipe):
    level n runs when the requested level (acr_values mapped by acr.loa.map) is >= n.

    Every factor execution has an authenticator config with `default.reference.value` (its
    RFC 8176 `amr` value) and `default.reference.maxAge`: the `amr` mapper emits only values of
    completed executions whose config has both (AmrUtils, an absent max age counts as 0)."""
    forms: list[dict[str, Any]] = []
    subflows: list[dict[str, Any]] = []
    configs: list[dict[str, Any]] = []
    previous: set[str] = set()
    for i, level in enumerate(realm["acr_levels"]):
        alias = f"zt-loa{level['loa']}"
        max_age = level_max_age(realm, level["loa"])
        # The factor this level adds on top of the lower ones.
        new = [f for f in level["factors"] if f not in previous] or level["factors"][-1:]
        previous |= set(level["factors"])
        configs.append(
            {
                "alias": f"{alias}-condition",
                "config": {
                    "loa-condition-level": str(level["loa"]),
                    "loa-max-age": str(max_age),
                },
            }
        )
        for factor in new:
            configs.append(
                {
                    "alias": f"{alias}-{factor}-amr",
                    "config": {
                        "default.reference.value": AMR_OF[factor],
                        "default.reference.maxAge": str(max_age),
                    },
                }
            )
        executions = [
            {
                "authenticator": "conditional-level-of-authentication",
                "authenticatorConfig": f"{alias}-condition",
                "authenticatorFlow": False,
                "requirement": "REQUIRED",
                "priority": 0,
                "userSetupAllowed": False,
            }
        ]
        for j, factor in enumerate(new):
            executions.append(
                {
                    "authenticator": AUTHENTICATORS[factor],
                    "authenticatorConfig": f"{alias}-{factor}-amr",
                    "authenticatorFlow": False,
                    "requirement": "REQUIRED",
                    "priority": 10 * (j + 1),
                    "userSetupAllowed": False,
                }
            )
        subflows.append(
            {
                "alias": alias,
                "description": f"{level['acr']} ({'+'.join(level['factors'])})",
                "providerId": "basic-flow",
                "topLevel": False,
                "builtIn": False,
                "authenticationExecutions": executions,
            }
        )
        forms.append(
            {
                "authenticatorFlow": True,
                "requirement": "CONDITIONAL",
                "priority": 10 * (i + 1),
                "flowAlias": alias,
                "userSetupAllowed": False,
            }
        )
    flows = [
        {
            "alias": "zt-browser",
            "description": "Step-up by level of authentication",
            "providerId": "basic-flow",
            "topLevel": True,
            "builtIn": False,
            "authenticationExecutions": [
                {
                    "authenticator": "auth-cookie",
                    "authenticatorFlow": False,
                    "requirement": "ALTERNATIVE",
                    "priority": 10,
                    "userSetupAllowed": False,
                },
                {
                    "authenticatorFlow": True,
                    "requirement": "ALTERNATIVE",
                    "priority": 20,
                    "flowAlias": "zt-browser-levels",
                    "userSetupAllowed": False,
                },
            ],
        },
        {
            "alias": "zt-browser-levels",
            "description": "One conditional sub-flow per level",
            "providerId": "basic-flow",
            "topLevel": False,
            "builtIn": False,
            "authenticationExecutions": forms,
        },
        *subflows,
    ]
    return flows, configs


def _groups(paths: list[str]) -> list[dict[str, Any]]:
    root: dict[str, Any] = {}
    for path in paths:
        node = root
        for part in path.strip("/").split("/"):
            node = node.setdefault(part, {})

    def build(tree: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
        return [
            {"name": name, "path": f"{prefix}/{name}", "subGroups": build(sub, f"{prefix}/{name}")}
            for name, sub in tree.items()
        ]

    return build(root, "")


def _users(realm: dict[str, Any]) -> list[dict[str, Any]]:
    users = []
    for name, u in realm["users"].items():
        user: dict[str, Any] = {
            "username": name,
            "enabled": True,
            "emailVerified": False,
            "firstName": u["first_name"],
            "lastName": u["last_name"],
            # Imported users get no default roles: name the default role (offline_access) here.
            "realmRoles": [*u["roles"], DEFAULT_ROLE.format(realm=realm["realm"])],
            "groups": list(u["groups"]),
            "credentials": [
                {
                    "type": "password",
                    "temporary": False,
                    "value": "${" + env_name("ZT_PASSWORD", name) + "}",
                }
            ],
            "requiredActions": [REQUIRED_ACTIONS[f] for f in u["factors"]],
        }
        if u.get("patient"):
            user["attributes"] = {"patient": [u["patient"]]}
        users.append(user)
    return users


def _roles(realm: dict[str, Any]) -> list[dict[str, Any]]:
    default = DEFAULT_ROLE.format(realm=realm["realm"])
    return [
        *({"name": n, "description": d} for n, d in realm["roles"].items()),
        {"name": OFFLINE_ACCESS, "description": "Keycloak: may hold offline (refresh) tokens"},
        {
            "name": default,
            "description": "Keycloak: the default role every user holds",
            "composite": True,
            "composites": {"realm": [OFFLINE_ACCESS]},
        },
    ]


def _scope_mappings(realm: dict[str, Any]) -> list[dict[str, Any]]:
    """Every client has `fullScopeAllowed: false`, so a token carries only the roles its client
    (or a client scope in effect) is mapped to: the user-facing clients get the realm's roles;
    `offline_access` comes with the scope of that name, as in a Keycloak-created realm."""
    users = [cid for cid, c in realm["clients"].items() if "authorization_code" in c["grant_types"]]
    mappings: list[dict[str, Any]] = [
        {"client": cid, "roles": sorted(realm["roles"])} for cid in users
    ]
    if OFFLINE_ACCESS in realm["scopes"]["oidc"]:
        mappings.append({"clientScope": OFFLINE_ACCESS, "roles": [OFFLINE_ACCESS]})
    return mappings


def _key_providers() -> dict[str, list[dict[str, Any]]]:
    """ES256 signs tokens (P-256, as the local provider); HS512 and AES keys for Keycloak's own
    internal tokens and cookies."""

    def provider(name: str, provider_id: str, **config: str) -> dict[str, Any]:
        return {
            "name": name,
            "providerId": provider_id,
            "subComponents": {},
            "config": {k: [v] for k, v in {"priority": "200", "enabled": "true",
                                              "active": "true", **config}.items()},
        }  # fmt: skip

    return {
        "org.keycloak.keys.KeyProvider": [
            provider("ecdsa-p256", "ecdsa-generated", ecdsaEllipticCurveKey="P-256"),
            provider("hmac-hs512", "hmac-generated", algorithm="HS512", secretSize="64"),
            provider("aes-128", "aes-generated", secretSize="16"),
        ]
    }


def generate(realm: dict[str, Any]) -> dict[str, Any]:
    t = realm["tokens"]
    bf = realm["brute_force"]
    wa = realm.get("webauthn") or {}
    flows, configs = _flows(realm)
    webauthn = {
        "UserVerificationRequirement": "required",
        "SignatureAlgorithms": ["ES256"],
        # Attestation policy (ID-10): the same conveyance and AAGUID allow-list as idp/local.
        "AttestationConveyancePreference": wa.get("attestation", "none"),
        "AcceptableAaguids": list(wa.get("aaguid_allow_list") or []),
    }
    return {
        "realm": realm["realm"],
        "displayName": realm["display_name"],
        "enabled": True,
        "sslRequired": "all",
        "registrationAllowed": False,
        "loginWithEmailAllowed": False,
        "accessTokenLifespan": t["access_token_lifetime_seconds"],
        "accessCodeLifespan": t["authorization_code_lifetime_seconds"],
        "ssoSessionMaxLifespan": t["session_lifetime_seconds"],
        "clientSessionMaxLifespan": t["refresh_token_lifetime_seconds"],
        "revokeRefreshToken": True,  # rotation: a refresh token is good once
        "refreshTokenMaxReuse": 0,
        "defaultSignatureAlgorithm": t["signing_algorithm"],
        # docs/identity.md: 5 failed factors within 15 minutes lock the name for 5 minutes.
        # Keycloak differs where it cannot follow: a successful login resets its count, an
        # unknown name is not counted, and it has no per-address throttle (docs/deploy.md).
        "bruteForceProtected": True,
        "bruteForceStrategy": "MULTIPLE",  # lock at every multiple of failureFactor
        "permanentLockout": False,
        "maxTemporaryLockouts": 0,  # 0: temporary lockouts, never a permanent one
        "failureFactor": bf["max_failures"],
        "waitIncrementSeconds": bf["lockout_seconds"],
        "maxFailureWaitSeconds": bf["lockout_seconds"],
        "maxDeltaTimeSeconds": bf["failure_window_seconds"],
        "quickLoginCheckMilliSeconds": 1000,
        "minimumQuickLoginWaitSeconds": 60,
        # Login and admin events, with details, to the server log (jboss-logging).
        "eventsEnabled": True,
        "eventsExpiration": 90 * 86400,
        "eventsListeners": ["jboss-logging"],
        "adminEventsEnabled": True,
        "adminEventsDetailsEnabled": True,
        "offlineSessionMaxLifespanEnabled": True,
        "offlineSessionMaxLifespan": t["refresh_token_lifetime_seconds"],
        "otpPolicyType": "totp",
        "otpPolicyAlgorithm": "HmacSHA1",
        "otpPolicyDigits": 6,
        "otpPolicyPeriod": 30,
        "otpPolicyLookAheadWindow": 1,
        "otpPolicyCodeReusable": False,  # a TOTP code is good once
        # The same policy for second-factor and passwordless WebAuthn.
        **{f"webAuthnPolicy{k}": v for k, v in webauthn.items()},
        **{f"webAuthnPolicyPasswordless{k}": v for k, v in webauthn.items()},
        "webAuthnPolicyPasswordlessRequireResidentKey": "Yes",
        "attributes": {
            "acr.loa.map": json.dumps({lv["acr"]: lv["loa"] for lv in realm["acr_levels"]}),
        },
        "roles": {"realm": _roles(realm)},
        "defaultRole": {"name": DEFAULT_ROLE.format(realm=realm["realm"])},
        "scopeMappings": _scope_mappings(realm),
        "groups": _groups(realm["groups"]),
        "users": _users(realm),
        "clientScopes": _client_scopes(realm),
        "defaultDefaultClientScopes": [],
        "defaultOptionalClientScopes": [],
        "clients": [_client(cid, c, realm) for cid, c in realm["clients"].items()],
        "authenticationFlows": flows,
        "authenticatorConfig": configs,
        "browserFlow": "zt-browser",
        "components": _key_providers(),
    }


def render() -> str:
    realm = yaml.safe_load(REALM_YAML.read_text(encoding="utf-8"))
    return json.dumps(generate(realm), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="fail when the committed file is stale")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        for out in (OUTPUT, DEPLOY_COPY):
            if not out.exists() or out.read_text(encoding="utf-8") != text:
                print(f"{out} is out of date: run idp/keycloak/generate.py", file=sys.stderr)
                return 1
        return 0
    for out in (OUTPUT, DEPLOY_COPY):
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
