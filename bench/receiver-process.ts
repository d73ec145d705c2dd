/**
 * The receiving side of bench/replication.bench.ts, in its own process (its own core), as a standby host is:
 *   raw <bytes>  a plain node:net sink that reports when <bytes> have arrived
 *   kemari       a Secondary
 * Reports { port } when listening, then { done } (raw) over IPC.
 */
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Secondary } from '../src/secondary/secondary.js';

const mode = process.argv[2];
const send = (m: unknown): void => void process.send?.(m);

if (mode === 'raw') {
  const bytes = Number(process.argv[3]);
  const server = createServer((socket) => {
    let received = 0;
    socket.on('data', (d: Buffer) => {
      const before = received;
      received += d.length;
      if (before < bytes && received >= bytes) send({ done: received });
    });
  });
  server.listen(0, '127.0.0.1', () => send({ port: (server.address() as AddressInfo).port }));
} else {
  // A generous heartbeat timeout: the one-capture full sync pauses the primary for a copy of the whole guest.
  const secondary = await Secondary.listen({ host: '127.0.0.1', port: 0, txnBytesMax: 2 ** 31, heartbeat: { intervalMs: 100, missedMax: 50 } });
  send({ port: secondary.port });
}
process.on('disconnect', () => process.exit(0));
