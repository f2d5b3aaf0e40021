"""authenticate.py: RFC 9068 access tokens and RFC 9449 DPoP proofs, one case per row."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from dicomweb_gateway.authenticate import Authenticator
from dicomweb_gateway.errors import GatewayError
from gateway_fakes import ISSUER, PUBLIC_URL, FakeIdp, dpop_proof, make_settings
from joserfc.jwk import ECKey, RSAKey

URL = PUBLIC_URL + "/dicom-web/studies"


class MemoryReplay:
    def __init__(self) -> None:
        self.seen: set[str] = set()

    async def first_use(self, key: str, expires_at: float) -> bool:
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


@pytest.fixture
def idp() -> FakeIdp:
    return FakeIdp()


@pytest.fixture
def authn(tmp_path: Path, idp: FakeIdp) -> Authenticator:
    settings = make_settings(tmp_path)
    return Authenticator.from_settings(settings, MemoryReplay(), idp.transport())


async def run(
    authn: Authenticator,
    headers: dict[str, str],
    query: str = "",
    method: str = "GET",
    url: str = URL,
) -> Any:
    return await authn.authenticate(headers, method, url, query)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.anyio
async def test_valid_bearer(authn: Authenticator, idp: FakeIdp) -> None:
    principal = await run(
        authn, bearer(idp.token(realm_access={"roles": ["clinician"]}, groups=["/site-north"]))
    )
    assert principal.subject == "user-1"
    assert "user/ImagingStudy.rs" in principal.scopes
    assert principal.roles == frozenset({"clinician"})


@pytest.mark.anyio
@pytest.mark.control("ID-1")
async def test_no_token_is_bare_challenge(authn: Authenticator) -> None:
    with pytest.raises(GatewayError) as caught:
        await run(authn, {})
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"].startswith('Bearer realm="dicomweb"')
    assert "error=" not in caught.value.headers["WWW-Authenticate"]


def _forged(idp: FakeIdp) -> dict[str, Any]:
    now = int(time.time())
    foreign = ECKey.generate_key("P-256", {"kid": "k1"})
    other_kid = ECKey.generate_key("P-256", {"kid": "evil"})
    rsa = RSAKey.generate_key(2048, {"kid": "k1"})
    return {
        "bad signature": idp.token(key=foreign),
        "unknown kid from foreign key": idp.token(header={"kid": "evil"}, key=other_kid),
        "alg none": _none_token(idp),
        "HS256 with the public key": _hs256_with_public_key(idp),
        "RS256 not pinned": idp.token(header={"alg": "RS256"}, key=rsa),
        "typ JWT": idp.token(header={"typ": "JWT"}),
        "typ missing": idp.token(header={"typ": None}),
        "expired": idp.token(exp=now - 120, iat=now - 400),
        "future nbf": idp.token(nbf=now + 600),
        "future iat": idp.token(iat=now + 600, exp=now + 700),
        "wrong iss": idp.token(iss="https://evil.test/realms/dicomweb"),
        "wrong aud": idp.token(aud="https://other.test"),
        "viewer client id as aud": idp.token(aud="ohif-viewer"),
        "no aud": idp.token(aud=None),
        "lifetime too long": idp.token(exp=now + 3600),
        "no exp": idp.token(exp=None),
        "no sub": idp.token(sub=None),
        "no client_id": idp.token(client_id=None),
        "no jti": idp.token(jti=None),
        "jku header": idp.token(header={"jku": "https://evil.test/jwks"}),
        "embedded jwk": idp.token(header={"jwk": idp.key.as_dict(private=False)}),
        "garbage": "not.a.token",
        "two parts": "abc.def",
        "non ascii": "é.é.é",
    }


def _hs256_with_public_key(idp: FakeIdp) -> str:
    """The classic key-confusion forgery: HMAC keyed with the issuer's public key PEM."""
    import hashlib
    import hmac

    signing_input = _enc({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}) + "." + _enc(idp.claims())
    mac = hmac.new(idp.key.as_pem(private=False), signing_input.encode(), hashlib.sha256)
    return signing_input + "." + base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def _enc(d: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def _none_token(idp: FakeIdp) -> str:
    enc = _enc
    return enc({"alg": "none", "typ": "at+jwt", "kid": "k1"}) + "." + enc(idp.claims()) + "."


FORGED_NAMES = list(_forged(FakeIdp()).keys())


@pytest.mark.anyio
@pytest.mark.control("ID-1")
@pytest.mark.control("ID-2")
@pytest.mark.parametrize("case", FORGED_NAMES)
async def test_forged_tokens(authn: Authenticator, idp: FakeIdp, case: str) -> None:
    token = _forged(idp)[case]
    with pytest.raises(GatewayError) as caught:
        await run(authn, bearer(token))
    assert caught.value.status == 401, case
    assert caught.value.code == "invalid_token"
    assert 'error="invalid_token"' in caught.value.headers["WWW-Authenticate"]


@pytest.mark.anyio
@pytest.mark.control("ID-1")
async def test_query_string_token_refused(authn: Authenticator, idp: FakeIdp) -> None:
    with pytest.raises(GatewayError) as caught:
        await run(authn, {}, query="access_token=" + idp.token())
    assert caught.value.status in (400, 401)


@pytest.mark.anyio
async def test_leeway_accepts_slightly_expired(authn: Authenticator, idp: FakeIdp) -> None:
    now = int(time.time())
    await run(authn, bearer(idp.token(exp=now - 10, iat=now - 200)))


@pytest.mark.anyio
async def test_jwks_refresh_is_rate_limited(authn: Authenticator, idp: FakeIdp) -> None:
    await run(authn, bearer(idp.token()))
    assert idp.jwks_fetches == 1
    other = ECKey.generate_key("P-256", {"kid": "rotated"})
    for _ in range(5):
        with pytest.raises(GatewayError):
            await run(authn, bearer(idp.token(header={"kid": "rotated"}, key=other)))
    assert idp.jwks_fetches == 1  # unknown kids do not hammer the IdP


@pytest.mark.anyio
async def test_key_rotation_picked_up(tmp_path: Path) -> None:
    idp = FakeIdp()
    settings = make_settings(tmp_path, oidc={"jwks_min_refresh_seconds": 0})
    authn = Authenticator.from_settings(settings, MemoryReplay(), idp.transport())
    await run(authn, bearer(idp.token()))
    idp.key = ECKey.generate_key("P-256", {"kid": "k2"})
    principal = await run(authn, bearer(idp.token()))
    assert principal.subject == "user-1"
    assert idp.jwks_fetches == 2


@pytest.mark.anyio
@pytest.mark.control("AO-2")
async def test_idp_unreachable_is_503(authn: Authenticator, idp: FakeIdp) -> None:
    idp.down = True
    with pytest.raises(GatewayError) as caught:
        await run(authn, bearer(idp.token()))
    assert caught.value.status == 503
    assert "Retry-After" in caught.value.headers


# ---------------------------------------------------------------- DPoP


def dpop_headers(token: str, proof: str) -> dict[str, str]:
    return {"authorization": f"DPoP {token}", "dpop": proof}


@pytest.fixture
def client_key() -> ECKey:
    return ECKey.generate_key("P-256")


@pytest.mark.anyio
async def test_valid_dpop(authn: Authenticator, idp: FakeIdp, client_key: ECKey) -> None:
    token = idp.token(cnf={"jkt": client_key.thumbprint()})
    principal = await run(authn, dpop_headers(token, dpop_proof(client_key, "GET", URL, token)))
    assert principal.dpop_jkt == client_key.thumbprint()
    # htu is compared without the query (RFC 9449 4.3).
    await run(
        authn, dpop_headers(token, dpop_proof(client_key, "GET", URL, token)), query="PatientID=1"
    )


DPOP_CASES = [
    "missing proof",
    "wrong htm",
    "wrong htu",
    "wrong ath",
    "no ath",
    "wrong key",
    "iat too old",
    "iat in the future",
    "typ jwt",
    "private key in jwk",
    "replayed jti",
    "two proofs",
    "HS256 proof",
    "unsigned garbage",
]


@pytest.mark.anyio
@pytest.mark.control("ID-5")
@pytest.mark.parametrize("case", DPOP_CASES)
async def test_bad_dpop(authn: Authenticator, idp: FakeIdp, client_key: ECKey, case: str) -> None:
    token = idp.token(cnf={"jkt": client_key.thumbprint()})
    now = int(time.time())
    good = dpop_proof(client_key, "GET", URL, token)
    proofs = {
        "missing proof": None,
        "wrong htm": dpop_proof(client_key, "POST", URL, token),
        "wrong htu": dpop_proof(client_key, "GET", PUBLIC_URL + "/dicom-web/series", token),
        "wrong ath": dpop_proof(client_key, "GET", URL, token + "x"),
        "no ath": dpop_proof(client_key, "GET", URL),
        "wrong key": dpop_proof(ECKey.generate_key("P-256"), "GET", URL, token),
        "iat too old": dpop_proof(client_key, "GET", URL, token, iat=now - 600),
        "iat in the future": dpop_proof(client_key, "GET", URL, token, iat=now + 600),
        "typ jwt": dpop_proof(client_key, "GET", URL, token, header={"typ": "JWT"}),
        "private key in jwk": dpop_proof(
            client_key, "GET", URL, token, header={"jwk": client_key.as_dict(private=True)}
        ),
        "replayed jti": good,
        "two proofs": good + "," + good,
        "HS256 proof": "eyJhbGciOiJIUzI1NiJ9.e30.x",
        "unsigned garbage": "abc",
    }
    if case == "replayed jti":
        await run(authn, dpop_headers(token, good))
    headers = {"authorization": f"DPoP {token}"}
    if proofs[case] is not None:
        headers["dpop"] = proofs[case]  # type: ignore[assignment]
    with pytest.raises(GatewayError) as caught:
        await run(authn, headers)
    assert caught.value.status == 401
    assert caught.value.code == "invalid_dpop_proof"
    challenge = caught.value.headers["WWW-Authenticate"]
    assert challenge.startswith("DPoP") and 'algs="ES256 PS256"' in challenge


@pytest.mark.anyio
@pytest.mark.control("ID-5")
async def test_dpop_bound_token_as_bearer_refused(
    authn: Authenticator, idp: FakeIdp, client_key: ECKey
) -> None:
    token = idp.token(cnf={"jkt": client_key.thumbprint()})
    with pytest.raises(GatewayError) as caught:
        await run(authn, bearer(token))
    assert caught.value.status == 401
    assert caught.value.code == "invalid_token"


@pytest.mark.anyio
async def test_unbound_token_with_dpop_scheme_refused(
    authn: Authenticator, idp: FakeIdp, client_key: ECKey
) -> None:
    token = idp.token()
    with pytest.raises(GatewayError):
        await run(authn, dpop_headers(token, dpop_proof(client_key, "GET", URL, token)))


def test_issuer_constant() -> None:
    assert ISSUER.startswith("https://")
