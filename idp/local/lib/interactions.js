// The provider's own login interaction: password (scrypt hash, off the event loop), then TOTP
// or WebAuthn as the requested acr and the user's enrolment demand; step-up reuses the
// session's user. Every failed factor looks the same and counts toward the name's lockout
// (a success never resets it); every POST takes a token from the client address's bucket
// first (a successful step gives it back). A new security key is bound only with proof at
// the level it gives: a key the user already has, or an administrator's one-time code.
import { setTimeout as sleep } from 'node:timers/promises';

import {
  generateAuthenticationOptions, generateRegistrationOptions,
  verifyAuthenticationResponse, verifyRegistrationResponse,
} from '@simplewebauthn/server';

import { redeemCode } from './enrolment.js';
import { acrRank, webauthnPolicy } from './realm.js';
import { checkPassword, DUMMY_HASH } from './store.js';
import * as totp from './totp.js';
import {
  CSP, enrolPage, GENERIC_ERROR, loginPage, messagePage, otpPage, registerPage, throttledPage, webauthnPage,
} from './pages.js';

const MAX_BODY = 16 * 1024;
const ACTIONS = 'login|otp|webauthn|abort|enrol|enrol-key|enrol-webauthn|enrol-code|register';
const ROUTE = new RegExp(`^/interaction/([A-Za-z0-9_-]{1,64})(?:/(${ACTIONS}))?$`);

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
  provider, realm, store, accounts, lockout, throttle, gate, events, prefix, issuerOrigin,
}) {
  const assets = `${prefix}/assets`;
  const rpID = new URL(issuerOrigin).hostname;
  const policy = webauthnPolicy(realm);
  const state = new Map(); // interaction uid -> { accountId, acr, step, challenge, enrol, at }
  const throttleNoted = new Map(); // address -> last `throttled` event (one a minute at most)
  // Abandoned sign-ins expire with their interaction (10 minutes).
  setInterval(() => {
    const limit = Date.now() - 600_000;
    for (const [uid, st] of state) if (st.at < limit) state.delete(uid);
    throttleNoted.clear();
  }, 60_000).unref();
  const levels = realm.acr_levels.map((l) => l.acr);
  const expired = (res) => send(res, 400, messagePage({ assets, title: 'Sign-in expired', text: 'Start again from the application.' }));

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

  // The assertion page: to finish signing in, or (purpose 'confirm') to prove an existing key
  // before registering another one.
  async function renderWebauthn(res, uid, accountId, { error = false, purpose = 'login' } = {}) {
    const user = store.user(accountId);
    const options = await generateAuthenticationOptions({
      rpID,
      allowCredentials: user.webauthn.map((c) => ({ id: c.id })),
      userVerification: 'required',
      timeout: 120000,
    });
    state.get(uid).challenge = options.challenge;
    const page = purpose === 'confirm'
      ? {
        action: `${prefix}/interaction/${uid}/enrol-webauthn`,
        title: 'Confirm with your security key',
        text: 'Use a security key you already have; then register the new one.',
      }
      : { action: `${prefix}/interaction/${uid}/webauthn`, enrolAction: `${prefix}/interaction/${uid}/enrol` };
    send(res, error ? 401 : 200, webauthnPage({
      assets, options, error, ...page,
    }));
  }

  async function renderRegister(res, uid, accountId, error = false) {
    const user = store.user(accountId);
    const u = realm.users[accountId];
    const options = await generateRegistrationOptions({
      rpName: realm.display_name,
      rpID,
      userName: accountId,
      userDisplayName: `${u.first_name} ${u.last_name}`,
      userID: Buffer.from(user.user_handle || accountId, 'utf8'),
      attestationType: policy.attestation,
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

  function renderEnrol(res, uid, error = false) {
    send(res, error ? 401 : 200, enrolPage({
      assets,
      keyAction: `${prefix}/interaction/${uid}/enrol-key`,
      codeAction: `${prefix}/interaction/${uid}/enrol-code`,
      error,
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

  // A WebAuthn assertion against the challenge of this interaction (one use).
  async function checkAssertion(st, form) {
    const user = store.user(st.accountId);
    let verified = false;
    try {
      const response = JSON.parse(String(form.get('credential') || ''));
      const cred = user.webauthn.find((c) => c.id === response.id);
      if (cred && st.challenge) {
        const result = await verifyAuthenticationResponse({
          response,
          expectedChallenge: st.challenge,
          expectedOrigin: issuerOrigin,
          expectedRPID: rpID,
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
    st.challenge = undefined; // one assertion per challenge
    return verified;
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

  function clientIp(req) {
    return String(req.socket.remoteAddress || 'unknown');
  }

  // A failed factor: counts toward the name's lockout, waits the backoff, answers 401.
  async function failed(ip, name) {
    await sleep(lockout.fail(name, Date.now(), { client_ip: ip }));
  }

  function locked(res, name, page) {
    const retry = lockout.lockedFor(name);
    if (retry) send(res, 429, page(), { 'retry-after': String(retry) });
    return retry > 0;
  }

  async function handle(req, res, rest) {
    const m = ROUTE.exec(rest);
    if (!m) return false;
    const [, uid, action] = m;
    const ip = clientIp(req);
    if (req.method === 'POST') {
      // Before any work (form, interaction lookup, hashing): the address's budget.
      const retry = throttle.take(ip);
      if (retry) {
        const last = throttleNoted.get(ip) || 0;
        if (Date.now() - last > 60_000) {
          throttleNoted.set(ip, Date.now());
          events('throttled', { client_ip: ip, retry_after: retry });
        }
        send(res, 429, throttledPage({ assets }), { 'retry-after': String(retry), connection: 'close' });
        return true;
      }
    }
    // Steps that succeed, and answers that cost nothing (expired, locked), give the token back.
    const spare = () => { if (req.method === 'POST') throttle.give(ip); };
    let details;
    try {
      details = await provider.interactionDetails(req, res);
    } catch {
      spare();
      expired(res);
      return true;
    }
    if (details.uid !== uid) {
      spare();
      expired(res);
      return true;
    }
    const client = details.params.client_id;

    if (details.prompt.name === 'consent') {
      // First-party clients only: consent is implied (the grant is built in loadExistingGrant).
      const grant = await accounts.autoGrantFromDetails(provider, details);
      spare();
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
    if (req.method === 'GET' && (action === 'enrol' || action === 'enrol-key')) {
      const st = state.get(uid);
      if (!st || st.step !== 'webauthn') {
        expired(res);
        return true;
      }
      if (action === 'enrol') renderEnrol(res, uid);
      else await renderWebauthn(res, uid, st.accountId, { purpose: 'confirm' });
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
      if (locked(res, username, page)) {
        spare();
        return true;
      }
      if (!gate.tryEnter()) { // the server is busy: the attempt still costs its token
        send(res, 429, throttledPage({ assets }), { 'retry-after': '1' });
        return true;
      }
      let ok;
      try {
        const user = store.user(username);
        // Always hash (a dummy for unknown names): the same work whether the name exists.
        ok = (await checkPassword(password, user ? user.password_hash : DUMMY_HASH)) && Boolean(user);
      } finally {
        gate.leave();
      }
      if (!ok) {
        await failed(ip, username);
        send(res, 401, page());
        return true;
      }
      // A lockout reached while this password was being checked still applies.
      if (locked(res, username, page)) return true;
      spare();
      await afterPassword(req, res, uid, details, username);
      return true;
    }

    const st = state.get(uid);
    const expected = {
      otp: 'otp', webauthn: 'webauthn', 'enrol-webauthn': 'webauthn', 'enrol-code': 'webauthn', register: 'webauthn',
    };
    if (!st || st.step !== expected[action]) {
      spare();
      expired(res);
      return true;
    }
    const user = store.user(st.accountId);

    if (action === 'otp') {
      const page = () => otpPage({ assets, action: `${prefix}/interaction/${uid}/otp`, error: true });
      if (locked(res, st.accountId, page)) {
        spare();
        return true;
      }
      if (!checkOtp(st.accountId, form.get('otp'))) {
        await failed(ip, st.accountId);
        send(res, 401, page());
        return true;
      }
      spare();
      state.delete(uid);
      await finish(req, res, accounts.loginResult(st.accountId, st.acr));
      return true;
    }

    if (action === 'enrol-code') {
      const page = () => enrolPage({
        assets,
        keyAction: `${prefix}/interaction/${uid}/enrol-key`,
        codeAction: `${prefix}/interaction/${uid}/enrol-code`,
        error: true,
      });
      if (locked(res, st.accountId, page)) {
        spare();
        return true;
      }
      const codeId = redeemCode(store.dir, st.accountId, form.get('enrolment_code'));
      if (!codeId) {
        events('enrolment_code_refused', { user: st.accountId, client_ip: ip });
        await failed(ip, st.accountId);
        send(res, 401, page());
        return true;
      }
      events('enrolment_code_redeemed', { user: st.accountId, code_id: codeId, client_ip: ip });
      spare();
      st.enrol = { via: 'enrolment_code', code_id: codeId };
      await renderRegister(res, uid, st.accountId);
      return true;
    }

    if (action === 'enrol-webauthn' || action === 'webauthn') {
      const confirm = action === 'enrol-webauthn';
      if (lockout.lockedFor(st.accountId)) {
        spare();
        send(res, 429, messagePage({ assets, title: 'Sign-in failed', text: GENERIC_ERROR }), {
          'retry-after': String(lockout.lockedFor(st.accountId)),
        });
        return true;
      }
      if (!(await checkAssertion(st, form))) {
        await failed(ip, st.accountId);
        await renderWebauthn(res, uid, st.accountId, { error: true, purpose: confirm ? 'confirm' : 'login' });
        return true;
      }
      spare();
      if (confirm) {
        // Authenticated at the phishing-resistant level in this sign-in: may bind another key.
        st.enrol = { via: 'existing_key' };
        await renderRegister(res, uid, st.accountId);
        return true;
      }
      state.delete(uid);
      await finish(req, res, accounts.loginResult(st.accountId, st.acr));
      return true;
    }

    if (action === 'register') {
      if (!st.enrol) { // no proof at the level the key would give: nothing is registered
        events('credential_registration_refused', { user: st.accountId, reason: 'no_enrolment_proof', client_ip: ip });
        await failed(ip, st.accountId);
        expired(res);
        return true;
      }
      let registered = null;
      let reason = 'verification_failed';
      if (!lockout.lockedFor(st.accountId) && st.challenge) {
        try {
          const result = await verifyRegistrationResponse({
            response: JSON.parse(String(form.get('credential') || '')),
            expectedChallenge: st.challenge,
            expectedOrigin: issuerOrigin,
            expectedRPID: rpID,
            requireUserVerification: true,
          });
          const known = result.verified
            && store.allCredentialIds().has(result.registrationInfo.credential.id);
          if (result.verified && !policy.admits(result.registrationInfo.aaguid)) {
            reason = 'aaguid_not_allowed';
          } else if (known) {
            reason = 'credential_already_registered'; // never two owners for one key
          } else if (result.verified) {
            const { credential, aaguid } = result.registrationInfo;
            registered = {
              id: credential.id,
              public_key: Buffer.from(credential.publicKey).toString('base64url'),
              counter: credential.counter,
              aaguid,
              registered_at: new Date().toISOString(),
              registered_via: st.enrol.via,
            };
            user.webauthn.push(registered);
            store.save();
          }
        } catch (err) {
          process.stderr.write(`webauthn registration refused for ${st.accountId}: ${err.message}\n`);
        }
      } else {
        reason = 'locked_out';
      }
      st.challenge = undefined;
      if (!registered) {
        events('credential_registration_refused', { user: st.accountId, reason, client_ip: ip });
        if (reason !== 'locked_out') await failed(ip, st.accountId);
        await renderRegister(res, uid, st.accountId, true);
        return true;
      }
      events('credential_registered', {
        user: st.accountId,
        credential_id: registered.id,
        aaguid: registered.aaguid,
        via: st.enrol.via,
        ...(st.enrol.code_id ? { code_id: st.enrol.code_id } : {}),
        client_ip: ip,
      });
      spare();
      st.enrol = undefined; // one key per proof; now sign in with it
      await renderWebauthn(res, uid, st.accountId);
      return true;
    }
    return false;
  }

  return { handle };
}
