// Issues a one-time enrolment code (ID-10): `node idp/local/enrol-code.js --run-dir <run>
// --user <name> [--ttl-minutes 15] [--by <administrator>] [--json]` (or --config
// <run>/idp/config.json). The user may then register one new security key at sign-in
// ("Register a new security key" -> "enrolment code"). Only the code's SHA-256 is stored;
// the issue is recorded in the IdP's event log (<run>/idp/data/events.jsonl) with who issued
// it. Give the code to the user out of band (in person, after checking their identity).
import { readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { issueCode } from './lib/enrolment.js';
import { eventLogPath, makeEventLog } from './lib/events.js';
import { loadRealm } from './lib/realm.js';

function fail(message) {
  process.stderr.write(`enrol-code: ${message}\n`);
  process.exit(2);
}

const { values } = parseArgs({
  options: {
    'run-dir': { type: 'string' },
    config: { type: 'string' },
    user: { type: 'string' },
    'ttl-minutes': { type: 'string', default: '15' },
    by: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const configFile = values.config || (values['run-dir'] && join(values['run-dir'], 'idp', 'config.json'));
if (!configFile || !values.user) fail('usage: enrol-code.js --run-dir <run> --user <name> [--ttl-minutes 15] [--by <admin>] [--json]');
const ttl = Number(values['ttl-minutes']);
if (!Number.isInteger(ttl) || ttl < 1 || ttl > 60) fail('--ttl-minutes must be a whole number from 1 to 60');

const config = JSON.parse(readFileSync(configFile, 'utf8'));
const realm = loadRealm(config.realm_file, {
  gatewayUrl: config.resource || config.gateway_url, emrUrl: config.emr_url,
});
const user = Object.hasOwn(realm.users, values.user) ? realm.users[values.user] : undefined;
if (!user) fail(`no user ${JSON.stringify(values.user)} in the realm`);
// The realm decides who may hold a security key; a code cannot add a factor to anyone else.
if (!user.factors.includes('webauthn')) fail(`${values.user} is not enrolled for WebAuthn in the realm (factors)`);

const issuedBy = values.by || userInfo().username;
const issued = issueCode(config.data_dir, values.user, { ttlSeconds: ttl * 60, issuedBy });
makeEventLog(eventLogPath(config))('enrolment_code_issued', {
  user: values.user, code_id: issued.id, expires_at: new Date(issued.expires_at * 1000).toISOString(), issued_by: issuedBy,
});
if (values.json) {
  process.stdout.write(`${JSON.stringify({ user: values.user, ...issued })}\n`);
} else {
  process.stdout.write(`enrolment code for ${values.user}: ${issued.code}\n`
    + `single use, valid until ${new Date(issued.expires_at * 1000).toISOString()} (id ${issued.id})\n`);
}
