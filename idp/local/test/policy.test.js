// node --test idp/local/test: the attestation policy and one-time enrolment codes.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { codesPath, issueCode, redeemCode } from '../lib/enrolment.js';
import { loadRealm, webauthnPolicy } from '../lib/realm.js';

const YUBIKEY_5 = 'cb69481e-8ff7-4039-93ec-0a2729a154a8';

test('the realm file: attestation none and no allow-list (the demo default)', () => {
  const realm = loadRealm(new URL('../../realm.yaml', import.meta.url), { gatewayUrl: 'https://localhost:8443' });
  const p = webauthnPolicy(realm);
  assert.equal(p.attestation, 'none');
  assert.deepEqual(p.aaguidAllowList, []);
  assert.equal(p.admits('00000000-0000-0000-0000-000000000000'), true);
});

test('an AAGUID allow-list admits only listed authenticator models', () => {
  const p = webauthnPolicy({ webauthn: { attestation: 'direct', aaguid_allow_list: [YUBIKEY_5.toUpperCase()] } });
  assert.equal(p.attestation, 'direct');
  assert.equal(p.admits(YUBIKEY_5), true);
  assert.equal(p.admits('00000000-0000-0000-0000-000000000000'), false); // attestation none
  assert.equal(p.admits('01020304-0506-0708-0102-030405060708'), false); // Chromium's virtual one
  assert.equal(p.admits(undefined), false);
});

test('a bad policy is refused at start-up', () => {
  assert.throws(() => webauthnPolicy({ webauthn: { attestation: 'indirect-ish' } }));
  assert.throws(() => webauthnPolicy({ webauthn: { aaguid_allow_list: ['yubikey'] } }));
});

test('an enrolment code: hashed at rest, for its user only, once, before it expires', () => {
  const dir = mkdtempSync(join(tmpdir(), 'zt-enrol-'));
  const t0 = 1_800_000_000_000;
  const a = issueCode(dir, 'radiologist', { ttlSeconds: 900, issuedBy: 'admin', now: t0 });
  assert.match(a.code, /^[A-Z2-7]{4}(-[A-Z2-7]{4}){4}$/);
  assert.ok(!readFileSync(codesPath(dir), 'utf8').includes(a.code.replaceAll('-', '')));
  assert.equal(redeemCode(dir, 'north-clinician', a.code, { now: t0 }), null);
  assert.equal(redeemCode(dir, 'radiologist', 'AAAA-BBBB-CCCC-DDDD-EEEE', { now: t0 }), null);
  assert.equal(redeemCode(dir, 'radiologist', a.code.toLowerCase().replaceAll('-', ' '), { now: t0 }), a.id);
  assert.equal(redeemCode(dir, 'radiologist', a.code, { now: t0 }), null); // spent
  const b = issueCode(dir, 'radiologist', { ttlSeconds: 900, now: t0 });
  assert.equal(redeemCode(dir, 'radiologist', b.code, { now: t0 + 900_000 }), null); // expired
});
