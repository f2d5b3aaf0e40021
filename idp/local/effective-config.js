// Prints the realm facts the local provider enforces (clients, redirect URIs, scopes, roles,
// users, acr levels) as JSON: `node effective-config.js <realm.yaml> <gateway origin>`.
// The Keycloak agreement test compares the Keycloak import with this output.
import { effective, loadRealm } from './lib/realm.js';

const [realmFile, gatewayUrl] = process.argv.slice(2);
process.stdout.write(`${JSON.stringify(effective(loadRealm(realmFile, { gatewayUrl })), null, 2)}\n`);
