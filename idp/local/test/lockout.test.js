// node --test idp/local/test: lockout across factors, per-address throttle, hashing gate.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Lockout } from '../lib/lockout.js';
import { Gate, TokenBuckets } from '../lib/throttle.js';

const RULE = { max_failures: 5, lockout_seconds: 300, failure_window_seconds: 900 };

test('five failures of any factor within the window lock the name; successes reset nothing', () => {
  const locks = [];
  const l = new Lockout(RULE, { onLock: (name, info) => locks.push([name, info.failures]) });
  const t0 = 1_000_000;
  // A correct password between wrong codes: nothing calls a reset, the count keeps growing.
  for (let i = 0; i < 4; i += 1) l.fail('radiologist', t0 + i * 1000);
  assert.equal(l.lockedFor('radiologist', t0 + 4000), 0);
  assert.equal(l.failures('radiologist', t0 + 4000), 4);
  l.fail('Radiologist', t0 + 5000);
  assert.equal(l.lockedFor('radiologist', t0 + 5000), 300);
  assert.deepEqual(locks, [['radiologist', 5]]);
  // Locked until the lockout passes, then the right factor works again (no new failure).
  assert.equal(l.lockedFor('radiologist', t0 + 5000 + 300_000), 0);
  // One more failure inside the window locks again at once (five still within 15 minutes).
  l.fail('radiologist', t0 + 310_000);
  assert.ok(l.lockedFor('radiologist', t0 + 310_000) > 0);
});

test('the window slides: failures older than 15 minutes no longer count', () => {
  const l = new Lockout(RULE);
  const t0 = 5_000_000;
  for (let i = 0; i < 4; i += 1) l.fail('someone', t0);
  l.fail('someone', t0 + 900_001);
  assert.equal(l.lockedFor('someone', t0 + 900_001), 0);
  assert.equal(l.failures('someone', t0 + 900_001), 1);
});

test('unknown names lock out the same way, and memory stays bounded', () => {
  const l = new Lockout(RULE, { maxEntries: 100 });
  for (let i = 0; i < 1000; i += 1) l.fail(`nobody-${i}`, 1_000 + i);
  assert.ok(l.entries.size <= 100);
  for (let i = 0; i < 5; i += 1) l.fail('nobody-x', 10_000);
  assert.ok(l.lockedFor('nobody-x', 10_000) > 0);
});

test('backoff grows with the failures and is capped', () => {
  const l = new Lockout({ ...RULE, max_failures: 50 });
  const delays = Array.from({ length: 10 }, () => l.fail('x', 1));
  assert.equal(delays[0], 100);
  assert.ok(delays.every((d, i) => i === 0 || d >= delays[i - 1]));
  assert.equal(delays.at(-1), 2000);
});

test('token bucket: a burst is refused past its size, successes give tokens back', () => {
  const b = new TokenBuckets({ burst: 3, refill_per_minute: 60 });
  const t0 = 1_000_000;
  assert.deepEqual([1, 2, 3].map(() => b.take('127.0.0.1', t0)), [0, 0, 0]);
  assert.equal(b.take('127.0.0.1', t0), 1); // Retry-After: one token per second
  assert.equal(b.take('127.0.0.2', t0), 0); // another address has its own bucket
  b.give('127.0.0.1', t0);
  assert.equal(b.take('127.0.0.1', t0), 0);
  assert.equal(b.take('127.0.0.1', t0 + 1000), 0); // refilled
  assert.equal(b.take('127.0.0.1', t0 + 1000), 1);
});

test('token bucket memory stays bounded', () => {
  const b = new TokenBuckets({ burst: 2, refill_per_minute: 1 }, { maxKeys: 50 });
  for (let i = 0; i < 500; i += 1) b.take(`10.0.${i >> 8}.${i & 255}`, 1);
  assert.ok(b.buckets.size <= 50);
});

test('gate admits at most max at once', () => {
  const g = new Gate(2);
  assert.equal(g.tryEnter(), true);
  assert.equal(g.tryEnter(), true);
  assert.equal(g.tryEnter(), false);
  g.leave();
  assert.equal(g.tryEnter(), true);
});
