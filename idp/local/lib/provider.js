// oidc-provider configuration derived from the realm. Every choice here is a control:
// code flow only (no implicit, no password grant), PKCE S256 always, DPoP, RFC 9068 JWT
// access tokens for the gateway audience, rotating refresh tokens, revocation.
import Provider, { errors, interactionPolicy } from 'oidc-provider';

import Adapter from './adapter.js';
import { acrRank, clientMetadata, studyScopePattern } from './realm.js';

const { Check, base } = interactionPolicy;
const OIDC_SCOPES = ['openid', 'profile', 'offline_access'];

function requestedAcrRank(ctx, realm) {
  const values = (ctx.oidc.params.acr_values || '').split(' ').filter(Boolean);
  const ranks = values.map((v) => acrRank(realm, v)).filter((r) => r >= 0);
  // acr_values lists acceptable levels; meeting the lowest listed one satisfies the request.
  return ranks.length ? Math.min(...ranks) : 0;
}

function policy(realm) {
  const p = base();
  const login = p.get('login');
  // Step-up (RFC 9470): a session below the requested level must authenticate again.
  login.checks.add(new Check('acr_too_low', 'a higher authentication level is required', (ctx) => {
    const have = acrRank(realm, ctx.oidc.session.acr);
    return have < requestedAcrRank(ctx, realm) ? Check.REQUEST_PROMPT : Check.NO_NEED_TO_PROMPT;
  }));
  // Every client is first-party: consent is granted by loadExistingGrant, never prompted.
  const consent = p.get('consent');
  consent.checks.remove('native_client_prompt');
  return p;
}

// Scopes a client may get on a resource server: the realm's scopes for that server that the
// client is allowed, plus each requested study:<uid> when the client may narrow by study.
function resourceScopes(ctx, realm, rsName, client) {
  const rs = realm.resource_servers[rsName];
  const allowed = new Set(client['urn:zt:scopes']);
  const base = (rs.scopes || Object.keys(realm.scopes.resource)).filter((s) => allowed.has(s));
  const requested = (ctx.oidc.params.scope || '').split(' ').filter(Boolean);
  const study = studyScopePattern(realm);
  const maxLen = realm.scopes.parameterized.study.max_value_length + 'study:'.length;
  const studies = allowed.has('study:*') && rsName === 'dicomweb-gateway'
    ? requested.filter((s) => s.length <= maxLen && study.test(s)) : [];
  return [...base, ...studies];
}

function rejectUnknownScopes(ctx, realm, client) {
  const allowed = new Set(client['urn:zt:scopes']);
  const study = studyScopePattern(realm);
  for (const s of (ctx.oidc.params.scope || '').split(' ').filter(Boolean)) {
    const ok = allowed.has(s) || (allowed.has('study:*') && s.startsWith('study:') && study.test(s));
    if (!ok) throw new errors.InvalidScope('requested scope is not allowed', s);
  }
}

export function buildProvider({ config, realm, store, accounts }) {
  const gateway = realm.resource_servers['dicomweb-gateway'].audience;
  const rsByAudience = Object.fromEntries(
    Object.entries(realm.resource_servers).map(([name, rs]) => [rs.audience, name]),
  );
  const t = realm.tokens;
  const clients = Object.entries(realm.clients).map(([id, c]) => clientMetadata(
    id, c, c.public ? undefined : store.clientJwks(id),
  ));

  const configuration = {
    adapter: Adapter,
    clients,
    jwks: { keys: store.signingKeys() },
    cookies: { keys: store.cookieKeys() },
    findAccount: accounts.findAccount,
    acrValues: realm.acr_levels.map((l) => l.acr),
    scopes: OIDC_SCOPES,
    claims: {
      openid: ['sub'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username'],
      acr: null,
      amr: null,
      auth_time: null,
      sid: null,
    },
    responseTypes: ['code'],
    pkce: { methods: ['S256'], required: () => true },
    clientAuthMethods: ['none', 'private_key_jwt'],
    enabledJWA: {
      idTokenSigningAlgValues: ['ES256'],
      clientAuthSigningAlgValues: ['ES256', 'PS256'],
      dPoPSigningAlgValues: ['ES256', 'PS256'],
      requestObjectSigningAlgValues: ['ES256', 'PS256'],
    },
    extraClientMetadata: {
      properties: ['urn:zt:web_origins', 'urn:zt:scopes', 'urn:zt:resources'],
    },
    clientBasedCORS(ctx, origin, client) {
      return (client['urn:zt:web_origins'] || []).includes(origin);
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      revocation: { enabled: true },
      introspection: {
        enabled: true,
        // Only the gateway (resource server) may introspect; clients may not probe tokens.
        allowedPolicy: async (ctx, client) => client.clientId === 'dicomweb-gateway',
      },
      dPoP: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx, form) => accounts.pages.logout(ctx, form),
        postLogoutSuccessSource: async (ctx) => accounts.pages.loggedOut(ctx),
      },
      userinfo: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => (oneOf ? oneOf[0] : gateway),
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator, client) => {
          const rsName = rsByAudience[resourceIndicator];
          if (!rsName || !client['urn:zt:resources'].includes(rsName)) {
            throw new errors.InvalidTarget();
          }
          rejectUnknownScopes(ctx, realm, client);
          return {
            scope: resourceScopes(ctx, realm, rsName, client).join(' '),
            audience: resourceIndicator,
            accessTokenTTL: t.access_token_lifetime_seconds,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: t.signing_algorithm } },
          };
        },
      },
    },
    // RFC 9068 claims the gateway's policy reads (acr/amr/auth_time are not added by default).
    extraTokenClaims: async (ctx, token) => accounts.tokenClaims(ctx, token),
    formats: {
      customizers: {
        // client_credentials tokens have no user: keep `sub` = client_id, no roles.
        jwt: async (ctx, token, jwt) => {
          if (!jwt.payload.scope) delete jwt.payload.scope;
        },
      },
    },
    loadExistingGrant: async (ctx) => accounts.autoGrant(ctx),
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: true,
    interactions: {
      policy: policy(realm),
      url: async (ctx, interaction) => `${new URL(config.issuer).pathname}/interaction/${interaction.uid}`,
    },
    renderError: async (ctx, out) => accounts.pages.error(ctx, out),
    ttl: {
      AccessToken: t.access_token_lifetime_seconds,
      ClientCredentials: t.access_token_lifetime_seconds,
      AuthorizationCode: t.authorization_code_lifetime_seconds,
      IdToken: t.id_token_lifetime_seconds,
      RefreshToken: t.refresh_token_lifetime_seconds,
      Grant: t.refresh_token_lifetime_seconds,
      Session: t.session_lifetime_seconds,
      Interaction: 600,
    },
    conformIdTokenClaims: false,
    allowOmittingSingleRegisteredRedirectUri: false,
  };

  const provider = new Provider(config.issuer, configuration);
  return provider;
}
