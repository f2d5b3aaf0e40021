// Everything secret the provider needs, generated at first start into data_dir (mode 0600,
// never committed): signing keys, cookie keys, user password hashes, TOTP secrets, WebAuthn
// credentials, client key pairs; and demo-credentials.json for the launcher and the tests.
import {
  generateKeyPairSync, randomBytes, randomUUID, scrypt, scryptSync, timingSafeEqual,
} from 'node:crypto';
import {
  existsSync, mkdirSync, readFileSync, renameSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { newSecret } from './totp.js';

const SCRYPT = { N: 2 ** 15, r: 8, p: 1, maxmem: 64 * 1024 * 1024 };
const scryptAsync = promisify(scrypt);

export function writeSecret(file, data) {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, typeof data === 'string' ? data : `${JSON.stringify(data, null, 2)}\n`, { mode: 0o600 });
  renameSync(tmp, file);
}

function readJson(file) {
  return JSON.parse(readFileSync(file, 'utf8'));
}

// Synchronous: used only while generating the realm's users at start-up (before listening).
export function hashPassword(password) {
  const salt = randomBytes(16);
  const hash = scryptSync(password, salt, 32, SCRYPT);
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64')}$${hash.toString('base64')}`;
}

// Sign-in: scrypt runs on libuv's thread pool, never on the event loop (ID-10), so discovery,
// token and JWKS requests are answered while passwords are checked.
export async function checkPassword(password, encoded) {
  const [kind, N, r, p, salt, hash] = String(encoded).split('$');
  if (kind !== 'scrypt') return false;
  const expected = Buffer.from(hash, 'base64');
  const actual = await scryptAsync(String(password), Buffer.from(salt, 'base64'), expected.length, {
    N: Number(N), r: Number(r), p: Number(p), maxmem: SCRYPT.maxmem,
  });
  return timingSafeEqual(actual, expected);
}

// A dummy hash with the same parameters, so an unknown user costs the same work as a known one.
export const DUMMY_HASH = hashPassword(randomBytes(16).toString('hex'));

function newPassword() {
  // 20 characters from a 64-symbol alphabet: 120 bits.
  return randomBytes(15).toString('base64url');
}

export function newSigningKey() {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: randomUUID(), alg: 'ES256', use: 'sig' };
}

function publicJwk(jwk) {
  const { d, ...pub } = jwk;
  return pub;
}

// WebAuthn: a pre-registered P-256 credential (the private half goes to demo-credentials.json
// so a test can load it into Chromium's virtual authenticator; a person registers a key).
function newWebAuthnCredential() {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const pub = publicKey.export({ format: 'jwk' });
  const x = Buffer.from(pub.x, 'base64url');
  const y = Buffer.from(pub.y, 'base64url');
  // COSE_Key (RFC 9053): {1: 2 (EC2), 3: -7 (ES256), -1: 1 (P-256), -2: x, -3: y}
  const cose = Buffer.concat([
    Buffer.from([0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20]), x,
    Buffer.from([0x22, 0x58, 0x20]), y,
  ]);
  return {
    stored: { id: randomBytes(16).toString('base64url'), public_key: cose.toString('base64url'), counter: 0 },
    private_key: privateKey.export({ format: 'der', type: 'pkcs8' }).toString('base64'),
  };
}

export class Store {
  constructor(dataDir, realm) {
    this.dir = dataDir;
    this.realm = realm;
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    mkdirSync(join(dataDir, 'clients'), { recursive: true, mode: 0o700 });
    this.files = {
      keys: join(dataDir, 'signing-keys.json'),
      cookies: join(dataDir, 'cookie-keys.json'),
      users: join(dataDir, 'users.json'),
      demo: join(dataDir, 'demo-credentials.json'),
    };
    this.init();
  }

  init() {
    if (!existsSync(this.files.keys)) writeSecret(this.files.keys, { keys: [newSigningKey()] });
    if (!existsSync(this.files.cookies)) {
      writeSecret(this.files.cookies, { keys: [randomBytes(32).toString('base64url')] });
    }
    const users = existsSync(this.files.users) ? readJson(this.files.users) : {};
    const demo = existsSync(this.files.demo) ? readJson(this.files.demo) : { users: {}, clients: {} };
    let changed = false;
    for (const [name, u] of Object.entries(this.realm.users)) {
      if (users[name]) continue;
      const password = newPassword();
      const rec = { password_hash: hashPassword(password), webauthn: [], totp_last_step: -1 };
      const shown = { password, roles: u.roles, groups: u.groups };
      if (u.patient) shown.patient = u.patient;
      if (u.factors.includes('otp')) {
        rec.totp_secret = newSecret();
        shown.totp_secret = rec.totp_secret;
      }
      if (u.factors.includes('webauthn')) {
        const cred = newWebAuthnCredential();
        rec.webauthn.push(cred.stored);
        rec.user_handle = randomBytes(16).toString('base64url');
        shown.webauthn = {
          rp_id: 'localhost',
          credential_id: cred.stored.id,
          private_key_pkcs8: cred.private_key,
          user_handle: rec.user_handle,
        };
      }
      users[name] = rec;
      demo.users[name] = shown;
      changed = true;
    }
    for (const [id, c] of Object.entries(this.realm.clients)) {
      const shown = { grant_types: c.grant_types, scopes: c.scopes };
      if (!c.public) {
        const keyPath = join(this.dir, 'clients', `${id}.jwk.json`);
        if (!existsSync(keyPath)) {
          writeSecret(keyPath, newSigningKey());
          changed = true;
        }
        shown.key_path = keyPath;
      }
      if (JSON.stringify(demo.clients[id]) !== JSON.stringify(shown)) {
        demo.clients[id] = shown;
        changed = true;
      }
    }
    if (changed || !existsSync(this.files.demo)) {
      writeSecret(this.files.users, users);
      writeSecret(this.files.demo, demo);
    }
    this.users = users;
  }

  signingKeys() {
    return readJson(this.files.keys).keys;
  }

  cookieKeys() {
    return readJson(this.files.cookies).keys;
  }

  clientJwks(id) {
    const keyPath = join(this.dir, 'clients', `${id}.jwk.json`);
    return { keys: [publicJwk(readJson(keyPath))] };
  }

  user(name) {
    return Object.hasOwn(this.realm.users, name) ? this.users[name] : undefined;
  }

  allCredentialIds() {
    return new Set(Object.values(this.users).flatMap((u) => (u.webauthn || []).map((c) => c.id)));
  }

  save() {
    writeSecret(this.files.users, this.users);
  }
}
