// One-time enrolment codes (ID-10, NIST SP 800-63B 6.1.2.1): an administrator issues a code
// for one user out of band (`node idp/local/enrol-code.js`); with it the user may register
// one new security key at sign-in without already holding a phishing-resistant session.
// A code is 100 random bits, shown once, stored only as its SHA-256 (high entropy: a slow hash
// adds nothing), good for 15 minutes by default and for one redemption.
//
// Store: <data_dir>/enrolment-codes.jsonl, append-only JSON lines (mode 0600):
//   {"kind":"issued","id","user","sha256","issued_at","expires_at","issued_by"}
//   {"kind":"redeemed","id","at"}
// Appending (never rewriting) lets the command and the running IdP share the file safely.
import {
  createHash, randomBytes, randomUUID, timingSafeEqual,
} from 'node:crypto';
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { base32Encode } from './totp.js';

export const DEFAULT_TTL_SECONDS = 900;

export function codesPath(dataDir) {
  return join(dataDir, 'enrolment-codes.jsonl');
}

// Dashes, spaces and case do not matter when the user types the code.
function normalise(code) {
  return String(code || '').toUpperCase().replace(/[^A-Z2-7]/g, '');
}

function digest(code) {
  return createHash('sha256').update(normalise(code)).digest();
}

function append(file, entry) {
  appendFileSync(file, `${JSON.stringify(entry)}\n`, { mode: 0o600, flag: 'a' });
}

function entries(file) {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8').split('\n').filter(Boolean).flatMap((line) => {
    try {
      return [JSON.parse(line)];
    } catch {
      return []; // a torn line is ignored, never trusted
    }
  });
}

export function issueCode(dataDir, user, { ttlSeconds = DEFAULT_TTL_SECONDS, issuedBy, now = Date.now() } = {}) {
  const raw = base32Encode(randomBytes(13)).slice(0, 20); // 100 bits
  const code = raw.match(/.{4}/g).join('-');
  const entry = {
    kind: 'issued',
    id: randomUUID(),
    user,
    sha256: digest(code).toString('hex'),
    issued_at: Math.floor(now / 1000),
    expires_at: Math.floor(now / 1000) + ttlSeconds,
    issued_by: issuedBy,
  };
  append(codesPath(dataDir), entry);
  return { code, id: entry.id, expires_at: entry.expires_at };
}

// Redeems `code` for `user`: returns the code's id (now spent) or null. Synchronous from read
// to append, so two sign-ins in this process can never redeem the same code.
export function redeemCode(dataDir, user, code, { now = Date.now() } = {}) {
  const file = codesPath(dataDir);
  if (normalise(code).length !== 20) return null;
  const presented = digest(code);
  const all = entries(file);
  const spent = new Set(all.filter((e) => e.kind === 'redeemed').map((e) => e.id));
  const match = all.find((e) => e.kind === 'issued' && e.user === user
    && typeof e.sha256 === 'string' && e.sha256.length === 64
    && timingSafeEqual(Buffer.from(e.sha256, 'hex'), presented));
  if (!match || spent.has(match.id) || match.expires_at * 1000 <= now) return null;
  append(file, { kind: 'redeemed', id: match.id, at: Math.floor(now / 1000) });
  return match.id;
}
