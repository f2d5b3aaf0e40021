"""Authenticate: RFC 9068 JWT access tokens, Bearer (RFC 6750) or DPoP-bound (RFC 9449).

One check per claim (STYLE rule 3), `now` and `leeway` injectable, algorithms pinned, keys from
the issuer's JWKS found through discovery over TLS with the deployment CA. Every failure is a
typed error with a `WWW-Authenticate` challenge; nothing is forwarded for an unauthenticated
request. When the issuer's keys cannot be fetched the gateway fails closed with 503 (AO-2).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, KeySet

from .context import Principal
from .errors import (
    GatewayError,
    invalid_dpop_proof,
    invalid_request,
    invalid_token,
    missing_credentials,
    service_unavailable,
)
from .settings import Settings

_AT_JWT_TYPES = frozenset({"at+jwt", "application/at+jwt"})  # RFC 9068 section 2.1
_MAX_TOKEN_BYTES = 8192
_VERIFIED_CACHE_SIZE = 4096


class ReplayCache(Protocol):
    async def first_use(self, key: str, expires_at: float) -> bool:
        """True the first time `key` is seen (until it expires), False for a replay."""
        ...


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _claims(payload: bytes) -> dict[str, Any]:
    try:
        claims = json.loads(payload)
    except ValueError:
        raise invalid_token("payload is not JSON") from None
    if not isinstance(claims, dict):
        raise invalid_token("payload is not a JSON object")
    return claims


# ---------------------------------------------------------------- the issuer's keys (JWKS)


class JwksCache:
    """The issuer's signing keys, found through OIDC discovery and refreshed on unknown `kid`.

    A refresh happens at most every `min_refresh` seconds so forged `kid` values cannot turn the
    gateway into a load generator against the IdP.
    """

    def __init__(
        self,
        issuer: str,
        client: httpx.AsyncClient,
        min_refresh: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self._client = client
        self._min_refresh = min_refresh
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._keys is not None

    async def key_for(self, kid: str) -> Any:
        key = self._lookup(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._lookup(kid)
            if key is not None:
                return key
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self._min_refresh:
                await self.refresh()
            key = self._lookup(kid)
            if self._keys is None:
                # Never had the issuer's keys: no token can be judged, so fail closed (AO-2).
                raise service_unavailable("issuer keys not loaded")
        if key is None:
            raise invalid_token(f"unknown kid {kid[:64]!r}")
        return key

    def _lookup(self, kid: str) -> Any:
        if self._keys is None:
            return None
        for key in self._keys.keys:
            if key.kid == kid:
                return key
        return None

    async def refresh(self) -> None:
        """Fetch discovery then the JWKS; any failure is 503 (fail closed, AO-2)."""
        self._fetched_at = self._clock()
        try:
            discovery = await self._client.get(self.issuer + "/.well-known/openid-configuration")
            discovery.raise_for_status()
            meta = discovery.json()
            if meta.get("issuer") != self.issuer:
                raise ValueError("discovery issuer mismatch")
            jwks_uri = meta["jwks_uri"]
            if not str(jwks_uri).startswith("https://"):
                raise ValueError("jwks_uri is not https")
            response = await self._client.get(jwks_uri)
            response.raise_for_status()
            data = response.json()
            # Only public signing keys: a JWKS that carries private or symmetric material is a
            # misconfiguration we refuse rather than use.
            keys = [
                k
                for k in data["keys"]
                if k.get("kty") in ("EC", "RSA", "OKP")
                and "d" not in k
                and k.get("use", "sig") == "sig"
            ]
            self._keys = KeySet.import_key_set({"keys": keys})
        except (httpx.HTTPError, ValueError, KeyError, TypeError, JoseError) as exc:
            raise service_unavailable(f"issuer keys unavailable: {exc!r}") from None


# ---------------------------------------------------------------- access token (RFC 9068)


@dataclass(frozen=True)
class TokenRules:
    issuer: str
    audience: str
    algorithms: frozenset[str]
    leeway: int
    max_lifetime: int


def check_header(header: Mapping[str, Any], rules: TokenRules) -> str:
    """RFC 9068 2.1 and RFC 8725 3.1: pinned asymmetric `alg`, `typ` at+jwt, a `kid`."""
    alg = header.get("alg")
    if alg not in rules.algorithms:
        raise invalid_token(f"alg {alg!r} not allowed")
    typ = str(header.get("typ", "")).lower()
    if typ not in _AT_JWT_TYPES:
        raise invalid_token(f"typ {header.get('typ')!r} is not at+jwt")
    for forbidden in ("jku", "x5u", "jwk", "crit"):
        # Keys come from the configured issuer only, never from the token itself.
        if forbidden in header:
            raise invalid_token(f"header {forbidden} not accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise invalid_token("no kid")
    return kid


def check_iss(claims: Mapping[str, Any], rules: TokenRules) -> None:
    if claims.get("iss") != rules.issuer:
        raise invalid_token(f"iss {claims.get('iss')!r}")


def check_aud(claims: Mapping[str, Any], rules: TokenRules) -> None:
    """RFC 9068 4 / RFC 8707: the audience must name this gateway."""
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if rules.audience not in audiences:
        raise invalid_token(f"aud {aud!r}")


def _int_claim(claims: Mapping[str, Any], name: str, required: bool) -> int | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise invalid_token(f"{name} missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_token(f"{name} not a number")
    return int(value)


def check_exp(claims: Mapping[str, Any], rules: TokenRules, now: int) -> int:
    exp = _int_claim(claims, "exp", True)
    assert exp is not None
    if exp + rules.leeway <= now:
        raise invalid_token("expired")
    return exp


def check_nbf(claims: Mapping[str, Any], rules: TokenRules, now: int) -> None:
    nbf = _int_claim(claims, "nbf", False)
    if nbf is not None and nbf - rules.leeway > now:
        raise invalid_token("not yet valid (nbf)")


def check_iat(claims: Mapping[str, Any], rules: TokenRules, now: int) -> int:
    iat = _int_claim(claims, "iat", True)
    assert iat is not None
    if iat - rules.leeway > now:
        raise invalid_token("issued in the future (iat)")
    return iat


def check_lifetime(exp: int, iat: int, rules: TokenRules) -> None:
    """ID-7: refuse tokens that live longer than the configured maximum."""
    if exp - iat > rules.max_lifetime:
        raise invalid_token(f"lifetime {exp - iat}s exceeds {rules.max_lifetime}s")


def check_required(claims: Mapping[str, Any]) -> None:
    """RFC 9068 2.2: sub, client_id and jti are essential (iss/aud/exp/iat checked apart)."""
    for name in ("sub", "client_id", "jti"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise invalid_token(f"{name} missing")


def check_claims(claims: Mapping[str, Any], rules: TokenRules, now: int) -> None:
    check_iss(claims, rules)
    check_aud(claims, rules)
    exp = check_exp(claims, rules, now)
    check_nbf(claims, rules, now)
    iat = check_iat(claims, rules, now)
    check_lifetime(exp, iat, rules)
    check_required(claims)


def principal_from(claims: Mapping[str, Any]) -> Principal:
    def strings(value: object) -> frozenset[str]:
        if isinstance(value, list):
            return frozenset(v for v in value if isinstance(v, str))
        return frozenset()

    scope = claims.get("scope", "")
    realm = claims.get("realm_access")
    roles = strings(realm.get("roles")) if isinstance(realm, dict) else frozenset()
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    aud = claims.get("aud")
    amr = claims.get("amr")
    auth_time = claims.get("auth_time")
    patient = claims.get("patient")
    acr = claims.get("acr")
    return Principal(
        subject=str(claims["sub"]),
        issuer=str(claims["iss"]),
        client_id=str(claims["client_id"]),
        scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
        roles=roles,
        groups=strings(claims.get("groups")),
        patient=patient if isinstance(patient, str) else None,
        acr=acr if isinstance(acr, str) else None,
        amr=tuple(a for a in amr if isinstance(a, str)) if isinstance(amr, list) else (),
        auth_time=int(auth_time) if isinstance(auth_time, int | float) else None,
        jti=str(claims["jti"]),
        audience=(aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else (),
        dpop_jkt=jkt if isinstance(jkt, str) else None,
        issued_at=int(claims["iat"]),
        expires_at=int(claims["exp"]),
    )


# ---------------------------------------------------------------- DPoP proofs (RFC 9449)


@dataclass(frozen=True)
class DpopRules:
    algorithms: frozenset[str]
    iat_window: int

    @property
    def algs(self) -> str:
        return " ".join(sorted(self.algorithms))


async def check_dpop_proof(
    proof: str,
    *,
    token: str,
    jkt: str,
    method: str,
    url: str,
    rules: DpopRules,
    replay: ReplayCache,
    now: float,
) -> None:
    """RFC 9449 section 4.3, one check after another; the replay check comes last."""
    algs = rules.algs

    def fail(detail: str) -> GatewayError:
        return invalid_dpop_proof(detail, algs)

    try:
        compact = jws.extract_compact(proof.encode("ascii"))
    except (JoseError, ValueError, UnicodeEncodeError):
        raise fail("proof is not a compact JWS") from None
    header = compact.headers()
    if header.get("typ") != "dpop+jwt":
        raise fail(f"typ {header.get('typ')!r}")
    if header.get("alg") not in rules.algorithms:
        raise fail(f"alg {header.get('alg')!r}")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise fail("no jwk")
    if any(p in jwk for p in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise fail("jwk carries private key material")
    try:
        key = JWKRegistry.import_key(jwk)
        jws.deserialize_compact(proof, key, algorithms=list(rules.algorithms))
    except (JoseError, ValueError, TypeError):
        raise fail("bad signature or key") from None
    claims = _claims(compact.payload)
    if claims.get("htm") != method:
        raise fail(f"htm {claims.get('htm')!r}")
    if not isinstance(claims.get("htu"), str) or _normal_htu(claims["htu"]) != _normal_htu(url):
        raise fail(f"htu {claims.get('htu')!r}")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or abs(now - iat) > rules.iat_window:
        raise fail("iat outside the window")
    expected_ath = _b64url(hashlib.sha256(token.encode("ascii")).digest())
    if claims.get("ath") != expected_ath:
        raise fail("ath does not match the token")
    if key.thumbprint() != jkt:
        raise fail("key does not match cnf.jkt")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 8 <= len(jti) <= 256:
        raise fail("jti missing")
    if not await replay.first_use(f"{jkt}:{jti}", now + 2 * rules.iat_window):
        raise fail("jti replayed")


def _normal_htu(url: str) -> str:
    """RFC 9449 4.3 step 9: compare without query and fragment, scheme/host case-insensitive."""
    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{parsed.scheme.lower()}://{parsed.host.lower()}:{port}{parsed.path}"


# ---------------------------------------------------------------- the authenticator


class Authenticator:
    def __init__(
        self,
        rules: TokenRules,
        dpop: DpopRules,
        jwks: JwksCache,
        replay: ReplayCache,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = rules
        self.dpop = dpop
        self.jwks = jwks
        self.replay = replay
        self._clock = clock
        self._verified: dict[bytes, Principal] = {}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        replay: ReplayCache,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Authenticator:
        context = ssl.create_default_context(cafile=str(settings.oidc.ca_cert))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        client = httpx.AsyncClient(
            verify=context, timeout=5.0, transport=transport, follow_redirects=False
        )
        rules = TokenRules(
            issuer=settings.oidc.issuer,
            audience=settings.public_url,
            algorithms=frozenset(settings.oidc.algorithms),
            leeway=settings.oidc.leeway_seconds,
            max_lifetime=settings.oidc.max_token_lifetime_seconds,
        )
        dpop = DpopRules(frozenset(settings.dpop.algorithms), settings.dpop.iat_window_seconds)
        jwks = JwksCache(settings.oidc.issuer, client, settings.oidc.jwks_min_refresh_seconds)
        return cls(rules, dpop, jwks, replay)

    async def close(self) -> None:
        await self.jwks._client.aclose()

    async def authenticate(
        self, headers: Mapping[str, str], method: str, url: str, query: str
    ) -> Principal:
        """Validate the request's credentials; `url` is the public URL without the query."""
        if _has_query_token(query):
            # RFC 6750 2.3 is a MAY; tokens in URLs end up in logs, so we refuse them (ID-1).
            raise invalid_request("access_token in the query string")
        authorization = headers.get("authorization")
        if not authorization:
            raise missing_credentials(self.dpop.algs)
        scheme, _, token = authorization.partition(" ")
        scheme = scheme.lower()
        token = token.strip()
        if scheme not in ("bearer", "dpop") or not token:
            raise missing_credentials(self.dpop.algs)
        if len(token) > _MAX_TOKEN_BYTES or not token.isascii():
            raise invalid_token("token too large or not ASCII")
        now = self._clock()
        principal = await self.validate_token(token, int(now))
        if scheme == "bearer":
            if principal.dpop_jkt is not None:
                # RFC 9449 7.1: a DPoP-bound token must not be accepted as a bearer token.
                raise invalid_token("DPoP-bound token presented as Bearer")
            return principal
        if principal.dpop_jkt is None:
            raise invalid_token("DPoP scheme with a token that is not DPoP-bound", "DPoP")
        proofs = headers.get("dpop")
        if not proofs or "," in proofs:
            raise invalid_dpop_proof("exactly one DPoP proof required", self.dpop.algs)
        await check_dpop_proof(
            proofs.strip(),
            token=token,
            jkt=principal.dpop_jkt,
            method=method,
            url=url,
            rules=self.dpop,
            replay=self.replay,
            now=now,
        )
        return principal

    async def validate_token(self, token: str, now: int) -> Principal:
        """Verify a token once; the same token string is then served from a small cache.

        The cache holds only tokens that passed every check, keyed by their SHA-256, and every
        hit re-checks the time claims, so it saves the signature check and nothing else.
        """
        key = hashlib.sha256(token.encode("ascii")).digest()
        cached = self._verified.get(key)
        if cached is not None:
            if cached.expires_at + self.rules.leeway > now and (
                cached.issued_at - self.rules.leeway <= now
            ):
                return cached
            del self._verified[key]
        principal = await self._validate_token(token, now)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[key] = principal
        return principal

    async def _validate_token(self, token: str, now: int) -> Principal:
        try:
            compact = jws.extract_compact(token.encode("ascii"))
        except (JoseError, ValueError):
            raise invalid_token("not a compact JWS") from None
        kid = check_header(compact.headers(), self.rules)
        key = await self.jwks.key_for(kid)
        try:
            jws.deserialize_compact(token, key, algorithms=list(self.rules.algorithms))
        except (JoseError, ValueError, TypeError):
            raise invalid_token("bad signature") from None
        claims = _claims(compact.payload)
        check_claims(claims, self.rules, now)
        return principal_from(claims)


def _has_query_token(query: str) -> bool:
    lowered = query.lower()
    return "access_token" in lowered or "access%5ftoken" in lowered
