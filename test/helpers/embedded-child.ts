// A process that starts the embedded PostgreSQL on a state directory and
// waits to be killed: `node --import tsx embedded-child.ts STATE_DIR [orphan]`.
// With `orphan` the server does not die with it (a Hydrant without setpriv).
import { startEmbeddedPostgres } from '../../src/db/embedded.ts';

const [stateDir, mode] = process.argv.slice(2);
await startEmbeddedPostgres({ stateDir: stateDir!, dieWithParent: mode !== 'orphan' });
process.stdout.write('ready\n');
setInterval(() => {}, 1 << 30);
