// Per-client-address throttling of the sign-in pages (ID-10, OWASP API4): a token bucket per
// address. Every POST to a sign-in step takes a token before any work (password hashing);
// a step that succeeds gives it back, so only failures (and refused answers) use the budget:
// a burst of anonymous guesses from one address gets 429 + Retry-After once the bucket is
// empty, while people signing in correctly behind the same address are not slowed down.
export class TokenBuckets {
  constructor({ burst, refill_per_minute: perMinute }, { maxKeys = 50_000 } = {}) {
    this.burst = burst;
    this.ratePerMs = perMinute / 60_000;
    this.maxKeys = maxKeys;
    this.buckets = new Map(); // key -> { tokens, at }
  }

  level(key, now) {
    const b = this.buckets.get(key);
    if (!b) return this.burst;
    return Math.min(this.burst, b.tokens + (now - b.at) * this.ratePerMs);
  }

  // Takes one token: 0 when granted, else the seconds until one is available.
  take(key, now = Date.now()) {
    const tokens = this.level(key, now);
    if (tokens < 1) return Math.max(1, Math.ceil((1 - tokens) / this.ratePerMs / 1000));
    this.set(key, tokens - 1, now);
    return 0;
  }

  // Gives a token back (a successful step).
  give(key, now = Date.now()) {
    this.set(key, Math.min(this.burst, this.level(key, now) + 1), now);
  }

  set(key, tokens, now) {
    this.buckets.delete(key);
    if (this.buckets.size >= this.maxKeys) {
      // Full buckets carry no state; then the least recently used addresses go first.
      for (const [k] of this.buckets) if (this.level(k, now) >= this.burst) this.buckets.delete(k);
      for (const k of this.buckets.keys()) {
        if (this.buckets.size < this.maxKeys) break;
        this.buckets.delete(k);
      }
    }
    if (tokens < this.burst) this.buckets.set(key, { tokens, at: now });
  }
}

// At most `max` password checks in flight (scrypt runs on libuv's thread pool); beyond that a
// sign-in is answered 429 at once instead of queueing work without bound.
export class Gate {
  constructor(max) {
    this.max = max;
    this.busy = 0;
  }

  tryEnter() {
    if (this.busy >= this.max) return false;
    this.busy += 1;
    return true;
  }

  leave() {
    this.busy = Math.max(0, this.busy - 1);
  }
}
