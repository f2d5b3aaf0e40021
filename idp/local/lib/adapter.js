// In-process storage for oidc-provider models (sessions, codes, refresh tokens, grants).
// State is lost on restart by design: the native demo re-issues everything after `make up`.
// Entries expire with their own TTL; no size cap, so a busy test run never evicts a grant
// whose revocation must still be honoured.
const store = new Map(); // key -> { value, expiresAt }
const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest']);

function get(key) {
  const e = store.get(key);
  if (!e) return undefined;
  if (e.expiresAt && e.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return e.value;
}

function set(key, value, expiresIn) {
  store.set(key, { value, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : 0 });
}

setInterval(() => {
  const now = Date.now();
  for (const [k, e] of store) if (e.expiresAt && e.expiresAt <= now) store.delete(k);
}, 60_000).unref();

export default class Adapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    if (this.model === 'Session') set(`sessionUid:${payload.uid}`, id, expiresIn);
    if (GRANTABLE.has(this.model) && payload.grantId) {
      const gk = `grant:${payload.grantId}`;
      const list = get(gk) || [];
      list.push(key);
      // The grant index outlives its tokens long enough to revoke every one of them.
      set(gk, list, Math.max(expiresIn || 0, 24 * 3600));
    }
    if (payload.userCode) set(`userCode:${payload.userCode}`, id, expiresIn);
    set(key, payload, expiresIn);
  }

  async find(id) {
    return get(this.key(id));
  }

  async findByUid(uid) {
    const id = get(`sessionUid:${uid}`);
    return id ? this.find(id) : undefined;
  }

  async findByUserCode(userCode) {
    const id = get(`userCode:${userCode}`);
    return id ? this.find(id) : undefined;
  }

  async consume(id) {
    const value = get(this.key(id));
    if (value) value.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    const gk = `grant:${grantId}`;
    for (const key of get(gk) || []) store.delete(key);
    store.delete(gk);
  }
}
