"""dicomweb-cli: tokens for people, devices and tests from the stack's OpenID provider."""

from dicomweb_cli.devices import client_credentials
from dicomweb_cli.dpop import generate_key, make_proof, thumbprint
from dicomweb_cli.login import authorize, exchange_code, login_password, refresh, revoke
from dicomweb_cli.tokens import OAuthError, TokenSet, decode_header, decode_unverified

__all__ = [
    "OAuthError",
    "TokenSet",
    "authorize",
    "client_credentials",
    "decode_header",
    "decode_unverified",
    "exchange_code",
    "generate_key",
    "login_password",
    "make_proof",
    "refresh",
    "revoke",
    "thumbprint",
]
