// The IdP's security event log (ID-10): append-only JSON lines, one event per line, written
// before the answer that depends on it leaves (appendFileSync; each line is a single write
// with O_APPEND, so the server and the enrol-code command never interleave within a line).
// Events: enrolment_code_issued, enrolment_code_redeemed, enrolment_code_refused,
// credential_registered, credential_registration_refused, lockout, throttled.
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';

export function eventLogPath(config) {
  return config.events_log || join(config.data_dir, 'events.jsonl');
}

export function makeEventLog(file) {
  return function record(event, fields = {}) {
    const line = `${JSON.stringify({ time: new Date().toISOString(), event, ...fields })}\n`;
    try {
      appendFileSync(file, line, { mode: 0o600, flag: 'a' });
    } catch (err) {
      process.stderr.write(`event log not writable (${err.message}): ${line}`);
    }
  };
}
