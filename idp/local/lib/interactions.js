// The provider's own login interaction: password (scrypt hash), then TOTP or WebAuthn as the
// requested acr and the user's enrolment demand; step-up reuses the session's user; every
// failure looks the same and counts toward the user name's lockout.
import { setTimeout as sleep } from 'node:timers/promises';

import {
  generateAuthenticationOptions, generateRegistrationOptions,
  verifyAuthenticationResponse, verifyRegistrationResponse,
} from '@simplewebauthn/server';

import { acrRank } from './realm.js';
import { checkPassword, DUMMY_HASH } from './store.js';
import * as totp from './totp.js';
import {
  CSP, loginPage, messagePage, otpPage, registerPage, webauthnPage,
} from './pages.js';

const MAX_BODY = 16 * 1024;

function readForm(req) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) { reject(new Error('body too large')); req.destroy(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

function send(res, status, html, extra = {}) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'content-security-policy': CSP,
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    ...extra,
  });
  res.end(html);
}

export function makeInteractions({
  provider, realm, store, accounts, lockout, prefix, issuerOrigin,
}) {
  const assets = `${prefix}/assets`;
  const state = new Map(); // interaction uid -> { accountId, acr, step, challenge, at }
  // Abandoned sign-ins expire with their interaction (10 minutes).
  setInterval(() => {
    const limit = Date.now() - 600_000;
    for (const [uid, st] of state) if (st.at < limit) state.delete(uid);
  }, 60_000).unref();
  const levels = realm.acr_levels.map((l) => l.acr);

  function requiredRank(details) {
    const values = String(details.params.acr_values || '').split(' ').filter(Boolean);
    const ranks = values.map((v) => acrRank(realm, v)).filter((r) => r >= 0);
    return ranks.length ? Math.min(...ranks) : 0;
  }

  // Which second step this user must take for this request, or null for password only.
  function secondStep(accountId, details) {
    const need = requiredRank(details);
    const factors = realm.users[accountId].factors;
    if (need === 0) return { step: null, acr: levels[0] };
    if (need === 1 && factors.includes('otp')) return { step: 'otp', acr: levels[1] };
    if (factors.includes('webauthn')) return { step: 'webauthn', acr: levels[2] };
    return { step: 'unavailable' };
  }

  async function finish(req, res, result) {
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  }

  async function renderWebauthn(res, uid, accountId, error = false) {
    const user = store.user(accountId);
    const options = await generateAuthenticationOptions({
      rpID: new URL(issuerOrigin).hostname,
      allowCredentials: user.webauthn.map((c) => ({ id: c.id })),
      userVerification: 'required',
      timeout: 120000,
    });
    state.get(uid).challenge = options.challenge;
    // Enrolling another key needs the user's TOTP on top of the password.
    const enrolAction = user.totp_secret ? `${prefix}/interaction/${uid}/enrol` : null;
    send(res, error ? 401 : 200, webauthnPage({
      assets, action: `${prefix}/interaction/${uid}/webauthn`, options, error, enrolAction,
    }));
  }

  async function renderRegister(res, uid, accountId, error = false) {
    const user = store.user(accountId);
    const u = realm.users[accountId];
    const options = await generateRegistrationOptions({
      rpName: realm.display_name,
      rpID: new URL(issuerOrigin).hostname,
      userName: accountId,
      userDisplayName: `${u.first_name} ${u.last_name}`,
      userID: Buffer.from(user.user_handle || accountId, 'utf8'),
      attestationType: 'none',
      excludeCredentials: user.webauthn.map((c) => ({ id: c.id })),
      authenticatorSelection: { userVerification: 'required', residentKey: 'discouraged' },
      supportedAlgorithmIDs: [-7, -257],
      timeout: 120000,
    });
    state.get(uid).challenge = options.challenge;
    send(res, error ? 401 : 200, registerPage({
      assets, action: `${prefix}/interaction/${uid}/register`, options, error,
    }));
  }

  // RFC 6238 check with single use of each time step.
  function checkOtp(accountId, code) {
    const user = store.user(accountId);
    const step = user.totp_secret
      ? totp.verify(user.totp_secret, String(code || ''), { lastStep: user.totp_last_step })
      : null;
    if (step === null) return false;
    user.totp_last_step = step; // a code is good once (RFC 6238 5.2)
    store.save();
    return true;
  }

  async function afterPassword(req, res, uid, details, accountId) {
    const next = secondStep(accountId, details);
    if (next.step === null) return finish(req, res, accounts.loginResult(accountId, next.acr));
    if (next.step === 'unavailable') {
      return finish(req, res, {
        error: 'unmet_authentication_requirements',
        error_description: 'the requested authentication level is not available for this user',
      });
    }
    // The step is bound to the interaction: a TOTP code can never finish a WebAuthn level.
    state.set(uid, {
      accountId, acr: next.acr, step: next.step, at: Date.now(),
    });
    if (next.step === 'otp') {
      return send(res, 200, otpPage({ assets, action: `${prefix}/interaction/${uid}/otp` }));
    }
    return renderWebauthn(res, uid, accountId);
  }

  async function failure(res, name, page) {
    const delay = lockout.fail(name);
    await sleep(delay);
    send(res, 401, page());
  }

  async function handle(req, res, rest) {
    const m = /^\/interaction\/([A-Za-z0-9_-]{1,64})(?:\/(login|otp|webauthn|abort|enrol|enrol-otp|register))?$/.exec(rest);
    if (!m) return false;
    const [, uid, action] = m;
    let details;
    try {
      details = await provider.interactionDetails(req, res);
    } catch {
      send(res, 400, messagePage({ assets, title: 'Sign-in expired', text: 'Start again from the application.' }));
      return true;
    }
    if (details.uid !== uid) {
      send(res, 400, messagePage({ assets, title: 'Sign-in expired', text: 'Start again from the application.' }));
      return true;
    }
    const client = details.params.client_id;

    if (details.prompt.name === 'consent') {
      // First-party clients only: consent is implied (the grant is built in loadExistingGrant).
      const grant = await accounts.autoGrantFromDetails(provider, details);
      await finish(req, res, { consent: { grantId: grant } });
      return true;
    }

    if (req.method === 'GET' && !action) {
      const reasons = details.prompt.reasons;
      // Step-up only: the session's user is known, ask for the missing factor alone.
      if (details.session?.accountId && reasons.length === 1 && reasons[0] === 'acr_too_low') {
        await afterPassword(req, res, uid, details, details.session.accountId);
        return true;
      }
      send(res, 200, loginPage({ assets, action: `${prefix}/interaction/${uid}/login`, client }));
      return true;
    }
    if (req.method === 'GET' && action === 'abort') {
      await finish(req, res, { error: 'access_denied', error_description: 'sign-in cancelled' });
      return true;
    }
    if (req.method === 'GET' && action === 'enrol') {
      const st = state.get(uid);
      if (!st || st.step !== 'webauthn') {
        send(res, 400, messagePage({ assets, title: 'Sign-in expired', text: 'Start again from the application.' }));
        return true;
      }
      send(res, 200, otpPage({ assets, action: `${prefix}/interaction/${uid}/enrol-otp` }));
      return true;
    }
    if (req.method !== 'POST') {
      res.writeHead(405, { allow: 'GET, POST' }).end();
      return true;
    }
    const form = await readForm(req);

    if (action === 'login') {
      const username = String(form.get('username') || '');
      const password = String(form.get('password') || '');
      const page = () => loginPage({
        assets, action: `${prefix}/interaction/${uid}/login`, client, username, error: true,
      });
      const retry = lockout.lockedFor(username);
      if (retry) {
        send(res, 429, page(), { 'retry-after': String(retry) });
        return true;
      }
      const user = store.user(username);
      // Always hash, so timing does not reveal whether the name exists.
      const ok = checkPassword(password, user ? user.password_hash : DUMMY_HASH) && Boolean(user);
      if (!ok) {
        await failure(res, username, page);
        return true;
      }
      lockout.succeed(username);
      await afterPassword(req, res, uid, details, username);
      return true;
    }

    const st = state.get(uid);
    const expected = { otp: 'otp', webauthn: 'webauthn', 'enrol-otp': 'webauthn', register: 'webauthn' };
    if (!st || st.step !== expected[action]) {
      send(res, 400, messagePage({ assets, title: 'Sign-in expired', text: 'Start again from the application.' }));
      return true;
    }
    const retry = lockout.lockedFor(st.accountId);
    const user = store.user(st.accountId);

    if (action === 'otp') {
      const page = () => otpPage({ assets, action: `${prefix}/interaction/${uid}/otp`, error: true });
      if (retry) {
        send(res, 429, page(), { 'retry-after': String(retry) });
        return true;
      }
      if (!checkOtp(st.accountId, form.get('otp'))) {
        await failure(res, st.accountId, page);
        return true;
      }
      lockout.succeed(st.accountId);
      state.delete(uid);
      await finish(req, res, accounts.loginResult(st.accountId, st.acr));
      return true;
    }

    if (action === 'enrol-otp') {
      const page = () => otpPage({ assets, action: `${prefix}/interaction/${uid}/enrol-otp`, error: true });
      if (retry) {
        send(res, 429, page(), { 'retry-after': String(retry) });
        return true;
      }
      if (!realm.users[st.accountId].factors.includes('webauthn') || !checkOtp(st.accountId, form.get('otp'))) {
        await failure(res, st.accountId, page);
        return true;
      }
      lockout.succeed(st.accountId);
      st.enrolOk = true;
      await renderRegister(res, uid, st.accountId);
      return true;
    }

    if (action === 'register') {
      let registered = false;
      if (!retry && st.enrolOk && st.challenge) {
        try {
          const result = await verifyRegistrationResponse({
            response: JSON.parse(String(form.get('credential') || '')),
            expectedChallenge: st.challenge,
            expectedOrigin: issuerOrigin,
            expectedRPID: new URL(issuerOrigin).hostname,
            requireUserVerification: true,
          });
          if (result.verified) {
            const { credential } = result.registrationInfo;
            user.webauthn.push({
              id: credential.id,
              public_key: Buffer.from(credential.publicKey).toString('base64url'),
              counter: credential.counter,
            });
            store.save();
            registered = true;
          }
        } catch (err) {
          process.stderr.write(`webauthn registration refused for ${st.accountId}: ${err.message}\n`);
        }
      }
      st.challenge = undefined;
      if (!registered) {
        if (!retry) await sleep(lockout.fail(st.accountId));
        if (st.enrolOk) await renderRegister(res, uid, st.accountId, true);
        else send(res, 400, messagePage({ assets, title: 'Sign-in expired', text: 'Start again from the application.' }));
        return true;
      }
      st.enrolOk = false; // one key per enrolment; now sign in with it
      await renderWebauthn(res, uid, st.accountId);
      return true;
    }

    if (action === 'webauthn') {
      let verified = false;
      if (!retry) {
        try {
          const response = JSON.parse(String(form.get('credential') || ''));
          const cred = user.webauthn.find((c) => c.id === response.id);
          if (cred && st.challenge) {
            const result = await verifyAuthenticationResponse({
              response,
              expectedChallenge: st.challenge,
              expectedOrigin: issuerOrigin,
              expectedRPID: new URL(issuerOrigin).hostname,
              credential: {
                id: cred.id, publicKey: Buffer.from(cred.public_key, 'base64url'), counter: cred.counter,
              },
              requireUserVerification: true,
            });
            verified = result.verified;
            if (verified) {
              cred.counter = result.authenticationInfo.newCounter;
              store.save();
            }
          }
        } catch (err) {
          // The detail goes to the log only; the page stays generic.
          process.stderr.write(`webauthn assertion refused for ${st.accountId}: ${err.message}\n`);
          verified = false;
        }
      }
      st.challenge = undefined; // one assertion per challenge
      if (!verified) {
        if (!retry) await sleep(lockout.fail(st.accountId));
        await renderWebauthn(res, uid, st.accountId, true);
        return true;
      }
      lockout.succeed(st.accountId);
      state.delete(uid);
      await finish(req, res, accounts.loginResult(st.accountId, st.acr));
      return true;
    }
    return false;
  }

  return { handle };
}
