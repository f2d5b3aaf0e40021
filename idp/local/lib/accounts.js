// Accounts from the realm: the account model oidc-provider loads, the RFC 9068 claims added to
// access tokens, and the first-party grant (consent is never prompted).
import { acrLevel } from './realm.js';

export function makeAccounts({ realm }) {
  function findAccount(ctx, sub) {
    const u = Object.hasOwn(realm.users, sub) ? realm.users[sub] : undefined;
    if (!u) return undefined;
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          preferred_username: sub,
          given_name: u.first_name,
          family_name: u.last_name,
          name: `${u.first_name} ${u.last_name}`,
        };
      },
    };
  }

  async function tokenClaims(ctx, token) {
    if (token.kind !== 'AccessToken') return undefined;
    const u = Object.hasOwn(realm.users, token.accountId) ? realm.users[token.accountId] : undefined;
    if (!u) return undefined;
    // The code (first exchange) or the refresh token (later ones) records how the user signed in.
    const source = ctx.oidc.entities.AuthorizationCode || ctx.oidc.entities.RefreshToken;
    const claims = {
      preferred_username: token.accountId,
      realm_access: { roles: [...u.roles] },
      groups: [...u.groups],
    };
    if (u.patient) claims.patient = u.patient;
    if (source) {
      claims.acr = source.acr;
      claims.amr = source.amr;
      claims.auth_time = source.authTime;
    }
    return claims;
  }

  async function autoGrant(ctx) {
    const { Grant } = ctx.oidc.provider;
    const grant = new Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    const requested = new Set((ctx.oidc.params.scope || '').split(' ').filter(Boolean));
    const oidc = ['openid', 'profile', 'offline_access'].filter((s) => requested.has(s));
    if (oidc.length) grant.addOIDCScope(oidc.join(' '));
    grant.addOIDCClaims(['sub', 'acr', 'amr', 'auth_time', 'sid']);
    for (const [indicator, rs] of Object.entries(ctx.oidc.resourceServers || {})) {
      const scopes = [...rs.scopes].filter((s) => requested.has(s));
      if (scopes.length) grant.addResourceScope(indicator, scopes.join(' '));
    }
    await grant.save();
    return grant;
  }

  function loginResult(accountId, acr) {
    return {
      login: {
        accountId, acr, amr: acrLevel(realm, acr).amr, ts: Math.floor(Date.now() / 1000), remember: false,
      },
    };
  }

  // Consent prompt reached anyway (e.g. a new scope on a reused session): grant what is missing.
  async function autoGrantFromDetails(provider, details) {
    const { prompt: { details: d }, params, session } = details;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    return grant.save();
  }

  return {
    findAccount, tokenClaims, autoGrant, autoGrantFromDetails, loginResult,
  };
}
