// Key rotation: `node idp/local/rotate-keys.js <config.json>` puts a new ES256 key first (it
// signs from the next start) and keeps the two previous ones in the JWKS so tokens they
// signed still verify until they expire. Restart the provider afterwards.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { newSigningKey, writeSecret } from './lib/store.js';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const file = join(config.data_dir, 'signing-keys.json');
const { keys } = JSON.parse(readFileSync(file, 'utf8'));
const next = [newSigningKey(), ...keys].slice(0, 3);
writeSecret(file, { keys: next });
process.stdout.write(`signing key ${next[0].kid} active; ${next.length - 1} previous kept\n`);
