// Brute-force protection: failures counted per user name (known or not, so a lockout reveals
// nothing about which names exist). After max_failures within the window the name is locked.
export class Lockout {
  constructor({ max_failures: max, lockout_seconds: lockSec, failure_window_seconds: windowSec }) {
    this.max = max;
    this.lockMs = lockSec * 1000;
    this.windowMs = windowSec * 1000;
    this.entries = new Map();
  }

  key(name) {
    return String(name || '').toLowerCase().slice(0, 128);
  }

  lockedFor(name, now = Date.now()) {
    const e = this.entries.get(this.key(name));
    if (!e || !e.lockedUntil || e.lockedUntil <= now) return 0;
    return Math.ceil((e.lockedUntil - now) / 1000);
  }

  fail(name, now = Date.now()) {
    const k = this.key(name);
    let e = this.entries.get(k);
    if (!e || now - e.first > this.windowMs) e = { first: now, count: 0, lockedUntil: 0 };
    e.count += 1;
    if (e.count >= this.max) e.lockedUntil = now + this.lockMs;
    this.entries.set(k, e);
    // Exponential backoff before answering slows scripted guessing further (capped at 2 s).
    return Math.min(2000, 50 * 2 ** Math.min(e.count, 6));
  }

  succeed(name) {
    this.entries.delete(this.key(name));
  }
}
