// Loads idp/realm.yaml, substitutes ${GATEWAY_URL} (and ${EMR_URL}) and derives the effective configuration
// the provider runs with. effective() is also printed by effective-config.js so the Keycloak
// agreement test compares both providers against the same facts.
import { readFileSync } from 'node:fs';
import YAML from 'yaml';

const PLACEHOLDER = /\$\{([A-Z0-9_]+)\}/g;

function substitute(value, vars) {
  if (typeof value === 'string') {
    return value.replace(PLACEHOLDER, (whole, name) => {
      if (!(name in vars)) throw new Error(`realm placeholder \${${name}} has no value`);
      return vars[name];
    });
  }
  if (Array.isArray(value)) return value.map((v) => substitute(v, vars));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substitute(v, vars)]));
  }
  return value;
}

// The EMR simulator's origin (issue 19) when the launcher does not name one: `make up`'s.
export const DEFAULT_EMR_URL = 'https://localhost:8444';

export function loadRealm(file, { gatewayUrl, emrUrl = DEFAULT_EMR_URL }) {
  const raw = YAML.parse(readFileSync(file, 'utf8'));
  const origin = new URL(gatewayUrl).origin; // the audience is exactly the gateway origin
  return substitute(raw, { GATEWAY_URL: origin, EMR_URL: new URL(emrUrl).origin });
}

export function acrRank(realm, acr) {
  return realm.acr_levels.findIndex((l) => l.acr === acr);
}

export function acrLevel(realm, acr) {
  return realm.acr_levels.find((l) => l.acr === acr);
}

export function studyScopePattern(realm) {
  return new RegExp(realm.scopes.parameterized.study.pattern);
}

// oidc-provider client metadata for one realm client.
export function clientMetadata(id, c, jwks) {
  const meta = {
    client_id: id,
    client_name: c.name,
    application_type: c.application_type || 'web',
    grant_types: c.grant_types,
    // Only the code flow issues anything at the authorization endpoint (no implicit).
    response_types: c.grant_types.includes('authorization_code') ? ['code'] : [],
    redirect_uris: c.redirect_uris,
    post_logout_redirect_uris: c.post_logout_redirect_uris || [],
    token_endpoint_auth_method: c.public ? 'none' : c.client_authentication,
    dpop_bound_access_tokens: Boolean(c.dpop_required),
    id_token_signed_response_alg: 'ES256',
    'urn:zt:web_origins': c.web_origins || [],
    'urn:zt:scopes': c.scopes,
    'urn:zt:resources': c.resources || [],
  };
  const oidcScopes = c.scopes.filter((s) => ['openid', 'profile', 'offline_access'].includes(s));
  // Devices have no OIDC scope; oidc-provider wants the property absent, not empty.
  if (oidcScopes.length) meta.scope = oidcScopes.join(' ');
  if (!c.public) {
    meta.jwks = jwks;
    meta.token_endpoint_auth_signing_alg = 'ES256';
  }
  return meta;
}

// The facts both providers must agree on (see idp/keycloak/tests).
export function effective(realm) {
  const clients = {};
  for (const [id, c] of Object.entries(realm.clients)) {
    clients[id] = {
      public: Boolean(c.public),
      grant_types: [...c.grant_types].sort(),
      redirect_uris: [...c.redirect_uris].sort(),
      web_origins: [...(c.web_origins || [])].sort(),
      scopes: [...c.scopes].sort(),
      // oidc-provider asks PKCE S256 of every authorization code flow (public or not).
      pkce: c.public || c.grant_types.includes('authorization_code') ? 'S256' : null,
      dpop_required: Boolean(c.dpop_required),
      client_authentication: c.public ? 'none' : c.client_authentication,
    };
  }
  const users = {};
  for (const [name, u] of Object.entries(realm.users)) {
    users[name] = {
      roles: [...u.roles].sort(),
      groups: [...u.groups].sort(),
      factors: [...u.factors].sort(),
      patient: u.patient || null,
    };
  }
  return {
    realm: realm.realm,
    clients,
    users,
    roles: Object.keys(realm.roles).sort(),
    groups: [...realm.groups].sort(),
    scopes: [
      ...realm.scopes.oidc,
      ...Object.keys(realm.scopes.resource),
      ...Object.keys(realm.scopes.parameterized).map((p) => `${p}:*`),
    ].sort(),
    acr_levels: realm.acr_levels.map((l) => ({ acr: l.acr, loa: l.loa, factors: l.factors })),
    audience: realm.resource_servers['dicomweb-gateway'].audience,
    access_token_lifetime_seconds: realm.tokens.access_token_lifetime_seconds,
  };
}

// Attestation policy for new security keys (ID-10). `attestation` is what registration asks
// the authenticator for (none: the demo default; direct/enterprise: a signed statement);
// a non-empty `aaguid_allow_list` admits only those authenticator models at registration.
const ATTESTATION = new Set(['none', 'direct', 'enterprise']);
const AAGUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function webauthnPolicy(realm) {
  const w = realm.webauthn || {};
  const attestation = w.attestation || 'none';
  if (!ATTESTATION.has(attestation)) throw new Error(`webauthn.attestation: ${attestation} is not none, direct or enterprise`);
  const allow = (w.aaguid_allow_list || []).map((a) => String(a).toLowerCase());
  for (const a of allow) if (!AAGUID.test(a)) throw new Error(`webauthn.aaguid_allow_list: ${a} is not an AAGUID`);
  return {
    attestation,
    aaguidAllowList: allow,
    // An empty list admits any authenticator; otherwise only listed models (never the all-zero
    // AAGUID that attestation "none" may carry).
    admits(aaguid) {
      return allow.length === 0 || allow.includes(String(aaguid || '').toLowerCase());
    },
  };
}
