/**
 * The secondary as its own process: listens, keeps the replica, prints each committed epoch; on SIGINT or when
 * the primary goes away (with --promote-on-disconnect) it promotes and prints the resumed VM's digest.
 *
 *   npx tsx examples/receiver.ts --port 7400 [--host 127.0.0.1] [--verify] [--promote-on-disconnect]
 */
import { parseArgs } from 'node:util';
import { Secondary } from '../src/secondary/secondary.js';
import type { SecondaryCommit } from '../src/secondary/secondary.js';
import { digestHex } from '../src/replica/state-digest.js';

const { values } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '7400' },
    verify: { type: 'boolean', default: false },
    'promote-on-disconnect': { type: 'boolean', default: false },
  },
});

const secondary = await Secondary.listen({ host: values.host, port: Number(values.port), verify: values.verify });
console.log(`secondary listening on ${values.host}:${secondary.port}`);
secondary.on('session', (hello: { sessionId: string; memoryBytes: number }) =>
  console.log(`session ${hello.sessionId}: ${hello.memoryBytes >> 20} MiB guest`),
);
secondary.on('commit', (c: SecondaryCommit) =>
  console.log(`committed txn ${c.txn}${c.full ? ' (full sync)' : ''}: ${c.pages} pages, ${c.bytes} bytes${c.digest ? ` digest ${digestHex(c.digest).slice(0, 16)}…` : ''}`),
);
secondary.on('error', (e: Error) => console.error(`error: ${e.message}`));

async function promote(): Promise<void> {
  const { vm, txn, replay } = await secondary.promote();
  console.log(`promoted at epoch ${txn}: digest ${digestHex(vm.digest())}; ${replay.length} outputs to replay`);
  process.exit(0);
}
process.on('SIGINT', () => void promote());
if (values['promote-on-disconnect']) secondary.on('disconnect', () => void promote());
