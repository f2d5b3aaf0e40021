// Brute-force protection per account (ID-3, ID-10): every failed factor of a sign-in (user
// name and password, one-time code, security key, enrolment code) counts against the name,
// known or not (so a lockout reveals nothing about which names exist). max_failures within
// a sliding failure_window locks the name for lockout_seconds. A success never erases
// failures: they expire with the window only, so a correct password cannot reset the count
// of wrong codes that follow it.
export class Lockout {
  constructor({
    max_failures: max, lockout_seconds: lockSec, failure_window_seconds: windowSec,
  }, { onLock = () => {}, maxEntries = 50_000 } = {}) {
    this.max = max;
    this.lockMs = lockSec * 1000;
    this.windowMs = windowSec * 1000;
    this.onLock = onLock;
    this.maxEntries = maxEntries;
    this.entries = new Map(); // key -> { fails: [ms, ...] (last `max` only), lockedUntil }
  }

  key(name) {
    return String(name || '').toLowerCase().slice(0, 128);
  }

  lockedFor(name, now = Date.now()) {
    const e = this.entries.get(this.key(name));
    if (!e || !e.lockedUntil || e.lockedUntil <= now) return 0;
    return Math.ceil((e.lockedUntil - now) / 1000);
  }

  // Failures of `name` still inside the window.
  failures(name, now = Date.now()) {
    const e = this.entries.get(this.key(name));
    return e ? e.fails.filter((t) => now - t < this.windowMs).length : 0;
  }

  // Records one failure; returns the delay (ms) to wait before answering.
  // `context` (e.g. the client address) is passed on to onLock.
  fail(name, now = Date.now(), context = {}) {
    const k = this.key(name);
    let e = this.entries.get(k);
    if (e) this.entries.delete(k); // re-insert: the Map stays ordered by last activity
    else {
      this.prune(now);
      e = { fails: [], lockedUntil: 0 };
    }
    e.fails = [...e.fails.filter((t) => now - t < this.windowMs), now].slice(-this.max);
    this.entries.set(k, e);
    if (e.fails.length >= this.max && e.lockedUntil <= now) {
      e.lockedUntil = now + this.lockMs;
      this.onLock(k, { failures: e.fails.length, until: e.lockedUntil, ...context });
    } else if (e.fails.length >= this.max) {
      e.lockedUntil = now + this.lockMs; // failing while locked extends the lock
    }
    // Exponential backoff before answering slows scripted guessing further (capped at 2 s).
    return Math.min(2000, 50 * 2 ** Math.min(e.fails.length, 6));
  }

  // Memory stays bounded under a flood of invented names: forget what has expired, then
  // (still full) the least recently active names.
  prune(now = Date.now()) {
    if (this.entries.size < this.maxEntries) return;
    for (const [k, e] of this.entries) {
      if (e.lockedUntil <= now && e.fails.every((t) => now - t >= this.windowMs)) this.entries.delete(k);
    }
    for (const k of this.entries.keys()) {
      if (this.entries.size < this.maxEntries) break;
      this.entries.delete(k);
    }
  }
}
