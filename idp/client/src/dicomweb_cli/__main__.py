"""`dicomweb-cli login|token`: tokens from the stack's IdP for people and scripts.

    dicomweb-cli login --stack .run/stack.json --user north-clinician [--password P]
                       [--totp CODE | --totp-secret S] [--acr urn:zt:acr:mfa]
                       [--scope "openid user/ImagingStudy.rs"] [--dpop-key key.jwk.json]
    dicomweb-cli token --stack .run/stack.json --client modality-ct1 --scope system/ImagingStudy.c

`login` runs authorization code + PKCE S256 for the `dicomweb-cli` client (DPoP-bound: the key
is read from --dpop-key or generated and written there) through the IdP's own login pages.
Without --password the demo password from stack.json is used. Output: the token response as
JSON (access_token, refresh_token, id_token, claims), for scripts to pick from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from dicomweb_cli import dpop
from dicomweb_cli.devices import client_credentials
from dicomweb_cli.login import login_password
from dicomweb_cli.stack import load_stack
from dicomweb_cli.tokens import OAuthError, TokenSet


def _dpop_key(path: str | None) -> dict[str, Any]:
    if path and Path(path).exists():
        return dpop.load_key(path)
    key = dpop.generate_key()
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(key, f)
    return key


def _print(ts: TokenSet) -> None:
    out = {
        "token_type": ts.token_type,
        "access_token": ts.access_token,
        "expires_in": ts.expires_in,
        "refresh_token": ts.refresh_token,
        "id_token": ts.id_token,
        "scope": ts.scope,
        "claims": ts.claims,
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dicomweb-cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    login = sub.add_parser("login", help="log a person in (authorization code + PKCE)")
    login.add_argument("--stack", default=".run/stack.json")
    login.add_argument("--user", required=True)
    login.add_argument("--password")
    login.add_argument("--totp", help="a current 6-digit TOTP code")
    login.add_argument("--totp-secret", help="the base32 TOTP secret (computes the code)")
    login.add_argument("--acr", help="acr_values, e.g. urn:zt:acr:mfa")
    login.add_argument("--max-age", type=int)
    login.add_argument("--scope", default="openid user/ImagingStudy.rs")
    login.add_argument("--resource", help="RFC 8707 resource (default: the gateway)")
    login.add_argument("--dpop-key", help="private JWK file (created when missing)")
    token = sub.add_parser("token", help="client credentials with private_key_jwt (devices)")
    token.add_argument("--stack", default=".run/stack.json")
    token.add_argument("--client", required=True)
    token.add_argument("--scope", required=True)
    token.add_argument("--key", help="the client's private JWK (default: key_path in stack.json)")
    token.add_argument("--dpop-key", help="bind the token to this DPoP key (created when missing)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        stack = load_stack(args.stack)
        if args.command == "login":
            acr = args.acr or ("urn:zt:acr:mfa" if (args.totp or args.totp_secret) else None)
            ts = login_password(
                stack, args.user, args.scope, acr_values=acr, max_age=args.max_age,
                dpop_key=_dpop_key(args.dpop_key), client_id="dicomweb-cli",
                password=args.password, totp_code=args.totp, totp_secret=args.totp_secret,
                resource=args.resource,
            )  # fmt: skip
        else:
            key = _dpop_key(args.dpop_key) if args.dpop_key else None
            ts = client_credentials(stack, args.client, args.scope, key, key_path=args.key)
    except OAuthError as e:
        print(f"dicomweb-cli: {e}", file=sys.stderr)
        return 1
    _print(ts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
