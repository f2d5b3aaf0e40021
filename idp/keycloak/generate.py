"""Generate the Keycloak 26 realm import from idp/realm.yaml (the single source of truth).

    .venv/bin/python idp/keycloak/generate.py          # writes idp/keycloak/realm-dicomweb.json
    .venv/bin/python idp/keycloak/generate.py --check  # exit 1 when the committed file is stale

The output holds no secret: the gateway origin, user passwords and the device clients' public
keys are `${...}` placeholders that Keycloak fills from its environment at import
(`kc.sh start --import-realm`). TOTP and WebAuthn are enrolled at first login (required
actions). Keycloak needs `--features=dynamic-scopes` for the `study:*` scope.
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
OUTPUT = HERE / "realm-dicomweb.json"

# Which Keycloak authenticator proves which realm factor (browser flow executions).
AUTHENTICATORS = {
    "password": "auth-username-password-form",
    "otp": "auth-otp-form",
    "webauthn": "webauthn-authenticator",
}
REQUIRED_ACTIONS = {"otp": "CONFIGURE_TOTP", "webauthn": "webauthn-register"}
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


def _token_claims_mappers(audience: str) -> list[dict[str, Any]]:
    """The RFC 9068 claims the gateway reads, as the local provider issues them."""
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
        _mapper(
            "client_id",
            "oidc-usersessionmodel-note-mapper",
            {
                "claim.name": "client_id",
                "user.session.note": "client_id",
                "jsonType.label": "String",
                **token,
            },
        ),
        _mapper("acr loa level", "oidc-acr-mapper", {"id.token.claim": "true", **token}),
        _mapper("amr", "oidc-amr-mapper", {"id.token.claim": "true", **token}),
        _mapper(
            "auth_time",
            "oidc-usersessionmodel-note-mapper",
            {
                "claim.name": "auth_time",
                "user.session.note": "AUTH_TIME",
                "jsonType.label": "long",
                **token,
            },
        ),
    ]


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
    if c["public"]:
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
        "protocolMappers": _token_claims_mappers(audience) if grants else [],
        "defaultClientScopes": sorted(s for s in c["scopes"] if s in ("openid", "profile")),
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
    scopes: list[dict[str, Any]] = []
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


def _flows(realm: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Browser flow with one conditional sub-flow per level (Keycloak's step-up recipe):
    level n runs when the requested level (acr_values mapped by acr.loa.map) is >= n."""
    forms: list[dict[str, Any]] = []
    subflows: list[dict[str, Any]] = []
    configs: list[dict[str, Any]] = []
    previous: set[str] = set()
    for i, level in enumerate(realm["acr_levels"]):
        alias = f"zt-loa{level['loa']}"
        # The factor this level adds on top of the lower ones.
        new = [f for f in level["factors"] if f not in previous] or level["factors"][-1:]
        previous |= set(level["factors"])
        configs.append(
            {
                "alias": f"{alias}-condition",
                "config": {
                    "loa-condition-level": str(level["loa"]),
                    "loa-max-age": str(realm["tokens"]["session_lifetime_seconds"]),
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
            "realmRoles": list(u["roles"]),
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


def generate(realm: dict[str, Any]) -> dict[str, Any]:
    t = realm["tokens"]
    bf = realm["brute_force"]
    wa = realm.get("webauthn") or {}
    flows, configs = _flows(realm)
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
        "bruteForceProtected": True,
        "permanentLockout": False,
        "failureFactor": bf["max_failures"],
        "maxFailureWaitSeconds": bf["lockout_seconds"],
        "waitIncrementSeconds": 60,
        "maxDeltaTimeSeconds": bf["failure_window_seconds"],
        "otpPolicyType": "totp",
        "otpPolicyAlgorithm": "HmacSHA1",
        "otpPolicyDigits": 6,
        "otpPolicyPeriod": 30,
        "otpPolicyLookAheadWindow": 1,
        "webAuthnPolicyUserVerificationRequirement": "required",
        "webAuthnPolicySignatureAlgorithms": ["ES256"],
        # Attestation policy (ID-10): the same conveyance and AAGUID allow-list as idp/local.
        "webAuthnPolicyAttestationConveyancePreference": wa.get("attestation", "none"),
        "webAuthnPolicyAcceptableAaguids": list(wa.get("aaguid_allow_list") or []),
        "attributes": {
            "acr.loa.map": json.dumps({lv["acr"]: lv["loa"] for lv in realm["acr_levels"]}),
        },
        "roles": {"realm": [{"name": n, "description": d} for n, d in realm["roles"].items()]},
        "groups": _groups(realm["groups"]),
        "users": _users(realm),
        "clientScopes": _client_scopes(realm),
        "defaultDefaultClientScopes": [],
        "defaultOptionalClientScopes": [],
        "clients": [_client(cid, c, realm) for cid, c in realm["clients"].items()],
        "authenticationFlows": flows,
        "authenticatorConfig": configs,
        "browserFlow": "zt-browser",
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
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is out of date: run idp/keycloak/generate.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
