// node --test idp/local/test: RFC 6238 vectors, base32.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import * as totp from '../lib/totp.js';

const SECRET = totp.base32Encode(Buffer.from('12345678901234567890')); // RFC 6238 appendix B

test('RFC 6238 SHA-1 vectors (last six digits)', () => {
  for (const [t, code] of [[59, '287082'], [1111111109, '081804'], [1234567890, '005924'], [2000000000, '279037']]) {
    assert.equal(totp.hotp(SECRET, Math.floor(t / 30)), code);
  }
});

test('base32 round trip', () => {
  const buf = Buffer.from([0, 1, 2, 250, 251, 255, 7]);
  assert.deepEqual(totp.base32Decode(totp.base32Encode(buf)), buf);
});

test('a code is accepted once per step, with one step of drift', () => {
  const now = 1111111109 * 1000;
  const step = totp.verify(SECRET, '081804', { now });
  assert.equal(step, Math.floor(1111111109 / 30));
  assert.equal(totp.verify(SECRET, '081804', { now, lastStep: step }), null);
  assert.equal(totp.verify(SECRET, '081804', { now: now + 30_000 }), step);
  assert.equal(totp.verify(SECRET, '081804', { now: now + 90_000 }), null);
  assert.equal(totp.verify(SECRET, '81804', { now }), null);
});
