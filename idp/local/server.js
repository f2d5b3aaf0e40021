// Local OpenID provider for the native stack: `node idp/local/server.js <config.json>`.
// config.json (written by the launcher): issuer, host, port, tls_cert, tls_key, ca_cert,
// realm_file, resource, gateway_url, data_dir, optional events_log (default
// <data_dir>/events.jsonl). Ready when
// {issuer}/.well-known/openid-configuration answers 200.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { makeAccounts } from './lib/accounts.js';
import { eventLogPath, makeEventLog } from './lib/events.js';
import { makeInteractions } from './lib/interactions.js';
import { Lockout } from './lib/lockout.js';
import {
  CSP, esc, layout, messagePage,
} from './lib/pages.js';
import { buildProvider } from './lib/provider.js';
import { loadRealm } from './lib/realm.js';
import { Store } from './lib/store.js';
import { Gate, TokenBuckets } from './lib/throttle.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const ASSETS = {
  'style.css': ['text/css; charset=utf-8', readFileSync(join(HERE, 'assets', 'style.css'))],
  'b64url.js': ['text/javascript; charset=utf-8', readFileSync(join(HERE, 'assets', 'b64url.js'))],
  'webauthn.js': ['text/javascript; charset=utf-8', readFileSync(join(HERE, 'assets', 'webauthn.js'))],
  'webauthn-register.js': [
    'text/javascript; charset=utf-8', readFileSync(join(HERE, 'assets', 'webauthn-register.js')),
  ],
};

function main() {
  const configFile = process.argv[2];
  if (!configFile) {
    process.stderr.write('usage: node server.js <config.json>\n');
    process.exit(2);
  }
  const config = JSON.parse(readFileSync(configFile, 'utf8'));
  const realm = loadRealm(config.realm_file, {
    gatewayUrl: config.resource || config.gateway_url, emrUrl: config.emr_url,
  });
  const store = new Store(config.data_dir, realm);
  const issuer = new URL(config.issuer);
  const prefix = issuer.pathname.replace(/\/$/, '');
  const assetsPath = `${prefix}/assets`;

  const logoutOrigins = [...new Set(Object.values(realm.clients)
    .flatMap((c) => c.post_logout_redirect_uris || [])
    .map((u) => new URL(u).origin))].join(' ');
  const accounts = makeAccounts({ realm });
  accounts.pages = {
    error(ctx, out) {
      ctx.type = 'html';
      ctx.set('content-security-policy', CSP);
      // RFC 6749 code and description only; never internals.
      ctx.body = layout(assetsPath, 'Sign-in error', `<p><strong>${esc(out.error)}</strong></p><p>${esc(out.error_description)}</p>`);
    },
    logout(ctx, form) {
      // Chromium applies form-action to the redirect that follows the POST, so the exact
      // registered post-logout origins must be listed (never a wildcard).
      ctx.set('content-security-policy', CSP.replace("default-src 'none'", `default-src 'none'; form-action 'self' ${logoutOrigins}`));
      ctx.body = layout(assetsPath, 'Sign out', `${form}<button type="submit" form="op.logoutForm" value="yes" name="logout">Sign out</button>`);
    },
    loggedOut(ctx) {
      ctx.set('content-security-policy', CSP);
      ctx.body = messagePage({ assets: assetsPath, title: 'Signed out', text: 'You are signed out.' });
    },
  };
  const provider = buildProvider({ config, realm, store, accounts });
  provider.on('server_error', (ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));
  // Security events (enrolment codes, registered keys, lockouts, throttling): JSON lines.
  const events = makeEventLog(eventLogPath(config));
  const bf = realm.brute_force;
  const lockout = new Lockout(bf, {
    onLock: (name, info) => events('lockout', {
      user: name,
      known_user: Boolean(store.user(name)),
      failures: info.failures,
      locked_until: new Date(info.until).toISOString(),
      client_ip: info.client_ip,
    }),
  });
  const throttle = new TokenBuckets(bf.per_address || { burst: 10, refill_per_minute: 30 });
  const gate = new Gate(bf.max_concurrent_password_checks || 16);
  const interactions = makeInteractions({
    provider, realm, store, accounts, lockout, throttle, gate, events, prefix, issuerOrigin: issuer.origin,
  });
  const oidc = provider.callback();

  const server = createServer({
    cert: readFileSync(config.tls_cert),
    key: readFileSync(config.tls_key),
    minVersion: 'TLSv1.2',
    ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305',
  }, async (req, res) => {
    res.setHeader('strict-transport-security', 'max-age=31536000');
    try {
      const path = new URL(req.url, issuer.origin).pathname;
      if (!path.startsWith(`${prefix}/`) && path !== prefix) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
        return;
      }
      const rest = path.slice(prefix.length);
      if (rest.startsWith('/assets/')) {
        const asset = ASSETS[rest.slice('/assets/'.length)];
        if (!asset || req.method !== 'GET') {
          res.writeHead(404).end();
          return;
        }
        res.writeHead(200, {
          'content-type': asset[0], 'cache-control': 'max-age=3600', 'x-content-type-options': 'nosniff',
        }).end(asset[1]);
        return;
      }
      if (rest.startsWith('/interaction/') && (await interactions.handle(req, res, rest))) return;
      // Mount oidc-provider under the issuer path (Keycloak's /realms/<realm> shape).
      req.originalUrl = req.url;
      req.url = req.url.slice(prefix.length) || '/';
      await oidc(req, res);
    } catch (err) {
      process.stderr.write(`request failed: ${err.stack}\n`);
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('server error');
    }
  });
  server.listen(config.port, config.host || '127.0.0.1', () => {
    process.stdout.write(`idp listening on ${config.issuer}\n`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
