import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { WitnessArbiter } from '../../src/failover/witness-arbiter.js';
import { WitnessServer } from '../../src/failover/witness-server.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

async function witness(options: Parameters<typeof WitnessServer.listen>[0] = {}) {
  const server = await WitnessServer.listen(options);
  cleanups.push(() => server.close());
  const client = async () => {
    const arbiter = await WitnessArbiter.connect({ port: server.port, timeoutMs: 500 });
    cleanups.push(() => arbiter.close());
    return arbiter;
  };
  return { server, client };
}

describe('witness over TCP', () => {
  it('grants the lease to one side; the other gets it only after expiry, with a higher generation', async () => {
    let now = 0;
    const { client } = await witness({ clock: () => now });
    const primary = await client();
    const secondary = await client();
    const lease = (await primary.acquire('vm', 'primary', 1000))!;
    expect(lease.generation).toBe(1);
    expect(await secondary.acquire('vm', 'secondary', 1000)).toBeUndefined();
    now = 999;
    expect(await primary.renew(lease)).toEqual(lease);
    now = 2000;
    const taken = (await secondary.acquire('vm', 'secondary', 1000))!;
    expect(taken.generation).toBe(2);
    expect(await primary.renew(lease)).toBeUndefined();
  });

  it('persists generations: a restarted witness never grants one twice', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kemari-witness-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const stateFile = join(dir, 'leases.json');
    const first = await witness({ stateFile });
    await (await first.client()).acquire('vm', 'primary', 1000);
    await first.server.close();
    const second = await witness({ stateFile });
    const lease = (await (await second.client()).acquire('vm', 'secondary', 1000))!;
    expect(lease.generation).toBe(2); // the old lease counts as expired after a restart; its generation does not repeat
  });

  it('an unreachable or silent witness is KEMARI_ARBITER_UNAVAILABLE', async () => {
    const { server, client } = await witness();
    const arbiter = await client();
    const port = server.port;
    await server.close();
    await expect(arbiter.acquire('vm', 'p', 100)).rejects.toMatchObject({ code: 'KEMARI_ARBITER_UNAVAILABLE' });
    await expect(WitnessArbiter.connect({ port })).rejects.toMatchObject({ code: 'KEMARI_ARBITER_UNAVAILABLE' });
  });

  it('answers malformed requests with an error and drops a client whose line is too long', async () => {
    const { server } = await witness();
    const socket = connect(server.port, '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    const replies: string[] = [];
    socket.on('data', (d) => replies.push(d.toString()));
    socket.write('{"id":1,"op":"steal","sessionId":"vm","holder":"x","ttlMs":5}\nnot json\n');
    await new Promise((r) => setTimeout(r, 50));
    const parsed = replies.join('').trim().split('\n').map((l) => JSON.parse(l) as { ok: boolean; code: string });
    expect(parsed.map((r) => [r.ok, r.code])).toEqual([
      [false, 'KEMARI_BAD_BODY'],
      [false, 'KEMARI_BAD_BODY'],
    ]);
    const closed = new Promise((r) => socket.once('close', r));
    socket.write('x'.repeat(5000));
    await closed;
  });
});
