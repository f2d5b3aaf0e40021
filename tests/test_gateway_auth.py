"""Gateway authentication against the running stack: ID-1, ID-2 (gateway half), ID-5, AO-2
(the IdP's keys unreachable) and GV-1.

Forged tokens come from tests/attack-corpus/gateway-requests.yaml and are sent to every route;
tokens that are validly signed but wrong in one claim are signed with the IdP's real key from the
run directory (what a misconfigured or compromised issuer would emit). Every refusal also checks
the archive's request log: nothing reached it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dicomweb_cli import generate_key, make_proof, thumbprint
from joserfc import jws
from joserfc.jwk import ECKey

from tests.conftest import ca_context

pytestmark = pytest.mark.e2e

CORPUS = yaml.safe_load(
    (Path(__file__).parent / "attack-corpus" / "gateway-requests.yaml").read_text()
)
READ = "openid user/ImagingStudy.rs"
ALL = "openid user/ImagingStudy.rs user/ImagingStudy.c"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def idp_key(stack: dict[str, Any]) -> ECKey:
    keys = json.loads((Path(stack["run_dir"]) / "idp" / "data" / "signing-keys.json").read_text())[
        "keys"
    ]
    return ECKey.import_key(keys[0])


def _relative(value: Any, now: int) -> Any:
    if isinstance(value, str) and value[:1] in "+-" and value[1:].isdigit():
        return now + int(value)
    return value


def forge(stack: dict[str, Any], recipe: dict[str, Any]) -> str:
    """Build a token per a corpus recipe (see the corpus header)."""
    now = int(time.time())
    key = idp_key(stack)
    claims: dict[str, Any] = {
        "iss": stack["idp_issuer"],
        "sub": "attacker",
        "aud": stack["resource"],
        "exp": now + 240,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "client_id": "ohif-viewer",
        "scope": "openid user/ImagingStudy.rs user/ImagingStudy.c user/ImagingStudy.d",
        "realm_access": {"roles": ["radiologist", "admin"]},
        "groups": ["/site-north", "/site-south"],
        "acr": "urn:zt:acr:phr",
        "auth_time": now,
    }
    for name, value in (recipe.get("claims") or {}).items():
        claims[name] = _relative(value, now)
    claims = {k: v for k, v in claims.items() if v is not None}
    header: dict[str, Any] = {"alg": "ES256", "typ": "at+jwt", "kid": key.kid}
    header.update(recipe.get("header") or {})
    header = {k: v for k, v in header.items() if v is not None}
    payload = json.dumps(claims).encode()
    alg = recipe.get("alg")
    if alg == "none":
        return _b64(json.dumps({**header, "alg": "none"}).encode()) + "." + _b64(payload) + "."
    if alg == "HS256-public-key":
        head = _b64(json.dumps({**header, "alg": "HS256"}).encode()) + "." + _b64(payload)
        mac = hmac.new(key.as_pem(private=False), head.encode(), hashlib.sha256).digest()
        return head + "." + _b64(mac)
    signer = key if recipe.get("key", "idp") == "idp" else ECKey.generate_key("P-256")
    return jws.serialize_compact(header, payload, signer, algorithms=["ES256"])


@pytest.fixture(scope="module")
def uids(stack: dict[str, Any], tokens: Any) -> dict[str, str]:
    """A study/series/instance the radiologist may read (from QIDO through the gateway)."""
    token = tokens.user("radiologist", READ).access_token
    with httpx.Client(verify=ca_context(stack), timeout=30) as client:
        headers = {"Authorization": f"Bearer {token}"}
        instances = client.get(f"{stack['dicomweb_url']}/instances", headers=headers).json()
    first = instances[0]
    return {
        "A": first["0020000D"]["Value"][0],
        "A_series": first["0020000E"]["Value"][0],
        "A_instance": first["00080018"]["Value"][0],
        "root": "/dicom-web",
    }


def expand(path: str, uids: dict[str, str]) -> str:
    return path.format(**uids)


ROUTES = [f"{r['method']} {r['path']}" for r in CORPUS["routes"]]
TOKENS = [t["id"] for t in CORPUS["tokens"]]


@pytest.mark.control("ID-1")
@pytest.mark.control("ID-2")
@pytest.mark.parametrize("token_id", TOKENS)
def test_forged_tokens_on_every_route(
    stack: dict[str, Any],
    https: httpx.Client,
    archive_log: Any,
    uids: dict[str, str],
    token_id: str,
) -> None:
    case = next(t for t in CORPUS["tokens"] if t["id"] == token_id)
    expected = case["expect"] if isinstance(case["expect"], list) else [case["expect"]]
    for route in CORPUS["routes"]:
        url = stack["gateway_url"] + expand(route["path"], uids)
        headers: dict[str, str] = {}
        if "forge" in case:
            token = forge(stack, case["forge"])
            headers["Authorization"] = f"Bearer {token}"
        elif case.get("authorization") is not None:
            headers["Authorization"] = case["authorization"]
        if case.get("query_token"):
            token = forge(stack, {})
            url += ("&" if "?" in url else "?") + "access_token=" + token
        mark = archive_log.mark()
        r = https.request(route["method"], url, headers=headers, content=b"")
        assert r.status_code in expected, (token_id, route, r.status_code, r.text)
        challenge = r.headers.get("www-authenticate", "")
        if r.status_code == 401:
            assert challenge.startswith("Bearer") or challenge.startswith("DPoP")
            if case.get("bare_challenge"):
                assert "error=" not in challenge
            else:
                assert 'error="invalid_token"' in challenge or "invalid_request" in challenge
        assert archive_log.since(mark) == [], (token_id, route)


@pytest.mark.control("ID-1")
def test_valid_token_accepted(stack: dict[str, Any], https: httpx.Client, tokens: Any) -> None:
    token = tokens.user("radiologist", READ).access_token
    r = https.get(f"{stack['dicomweb_url']}/studies", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()


@pytest.mark.control("ID-2")
def test_forged_audience_only_wrong_claim(stack: dict[str, Any], https: httpx.Client) -> None:
    """The same token with the right audience passes: the refusal is the audience alone."""
    good = forge(stack, {})
    r = https.get(f"{stack['dicomweb_url']}/studies", headers={"Authorization": f"Bearer {good}"})
    assert r.status_code == 200
    bad = forge(stack, {"claims": {"aud": "https://reporting.invalid"}})
    r = https.get(f"{stack['dicomweb_url']}/studies", headers={"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


# ---------------------------------------------------------------- DPoP (ID-5)


@pytest.fixture(scope="module")
def dpop_login(stack: dict[str, Any], tokens: Any) -> tuple[Any, dict[str, Any]]:
    key = generate_key()
    token_set = tokens.user_dpop("radiologist", READ, key)
    assert token_set.claims.get("cnf", {}).get("jkt") == thumbprint(key)
    return token_set, key


@pytest.mark.control("ID-5")
def test_dpop_valid(
    stack: dict[str, Any], https: httpx.Client, dpop_login: tuple[Any, dict[str, Any]]
) -> None:
    token_set, key = dpop_login
    url = f"{stack['dicomweb_url']}/studies"
    proof = make_proof(key, "GET", url, token_set.access_token)
    r = https.get(url, headers={"Authorization": f"DPoP {token_set.access_token}", "DPoP": proof})
    assert r.status_code == 200, r.text


@pytest.mark.control("ID-5")
@pytest.mark.parametrize(
    "case",
    [
        "as-bearer",
        "no-proof",
        "wrong-htm",
        "wrong-htu",
        "wrong-ath",
        "wrong-key",
        "iat-old",
        "iat-future",
        "replayed-jti",
        "two-proofs",
    ],
)
def test_dpop_refused(
    stack: dict[str, Any],
    https: httpx.Client,
    archive_log: Any,
    dpop_login: tuple[Any, dict[str, Any]],
    case: str,
) -> None:
    token_set, key = dpop_login
    token = token_set.access_token
    url = f"{stack['dicomweb_url']}/studies"
    now = int(time.time())
    headers = {"Authorization": f"DPoP {token}"}
    proofs = {
        "wrong-htm": make_proof(key, "POST", url, token),
        "wrong-htu": make_proof(key, "GET", f"{stack['dicomweb_url']}/series", token),
        "wrong-ath": make_proof(key, "GET", url, token + "x"),
        "wrong-key": make_proof(generate_key(), "GET", url, token),
        "iat-old": make_proof(key, "GET", url, token, iat=now - 600),
        "iat-future": make_proof(key, "GET", url, token, iat=now + 600),
        "two-proofs": make_proof(key, "GET", url, token) + "," + make_proof(key, "GET", url, token),
    }
    if case == "as-bearer":
        headers = {"Authorization": f"Bearer {token}"}
    elif case == "replayed-jti":
        proof = make_proof(key, "GET", url, token)
        first = https.get(url, headers=headers | {"DPoP": proof})
        assert first.status_code == 200
        headers["DPoP"] = proof
    elif case in proofs:
        headers["DPoP"] = proofs[case]
    mark = archive_log.mark()
    r = https.get(url, headers=headers)
    assert r.status_code == 401, (case, r.text)
    challenge = r.headers["www-authenticate"]
    if case == "as-bearer":
        assert 'error="invalid_token"' in challenge
    else:
        assert challenge.startswith("DPoP") and 'error="invalid_dpop_proof"' in challenge
    assert archive_log.since(mark) == []


# ---------------------------------------------------------------- AO-2, GV-1


@pytest.mark.control("AO-2")
def test_idp_keys_unreachable_fails_closed(
    stack: dict[str, Any],
    https: httpx.Client,
    archive_log: Any,
    extra_gateway: Any,
    tokens: Any,
) -> None:
    """A gateway whose issuer's keys cannot be fetched answers 503 and forwards nothing."""
    from ztstack.ports import free_port

    dead = f"https://localhost:{free_port()}/realms/dicomweb"
    token = tokens.user("radiologist", READ).access_token
    with extra_gateway({"oidc": {"issuer": dead}}) as gw:
        forged = forge(stack, {"claims": {"iss": dead}})
        for value in (token, forged):
            mark = archive_log.mark()
            r = https.get(
                f"{gw.url}/dicom-web/studies", headers={"Authorization": f"Bearer {value}"}
            )
            assert r.status_code in (503, 401)
            if value is forged:
                assert r.status_code == 503 and r.headers.get("retry-after")
            assert archive_log.since(mark) == []
        ready = https.get(f"{gw.url}/readyz")
        assert ready.status_code == 503


@pytest.mark.control("GV-1")
def test_protected_resource_metadata(stack: dict[str, Any], https: httpx.Client) -> None:
    r = https.get(f"{stack['gateway_url']}/.well-known/oauth-protected-resource")
    assert r.status_code == 200
    meta = r.json()
    assert meta["resource"] == stack["resource"]
    assert meta["authorization_servers"] == [stack["idp_issuer"]]
    assert meta["bearer_methods_supported"] == ["header"]
    assert "ES256" in meta["dpop_signing_alg_values_supported"]
    assert {"user/ImagingStudy.rs", "system/ImagingStudy.c"} <= set(meta["scopes_supported"])
    # And the discovery it points at is the live issuer.
    issuer = meta["authorization_servers"][0]
    disco = https.get(issuer + "/.well-known/openid-configuration").json()
    assert disco["issuer"] == issuer


@pytest.mark.control("ID-7")
def test_token_lifetime_above_maximum_refused(
    stack: dict[str, Any], https: httpx.Client, archive_log: Any
) -> None:
    """The gateway refuses a validly signed token living longer than its configured maximum."""
    url = f"{stack['dicomweb_url']}/studies"
    ok = forge(stack, {"claims": {"exp": "+300"}})
    assert https.get(url, headers={"Authorization": f"Bearer {ok}"}).status_code == 200
    mark = archive_log.mark()
    long_lived = forge(stack, {"claims": {"exp": "+301", "iat": "0"}})
    r = https.get(url, headers={"Authorization": f"Bearer {long_lived}"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert archive_log.since(mark) == []
