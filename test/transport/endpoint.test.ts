/** connect/listen dispatch on the endpoint: TCP, Unix socket, TLS, and the invalid combinations. */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KemariError } from '../../src/errors.js';
import { connect, listen } from '../../src/transport/index.js';
import type { Connection, Endpoint, Listener } from '../../src/transport/index.js';

let dir = '';
let tls: { ca: string; cert: string; key: string } = { ca: '', cert: '', key: '' };

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kemari-endpoint-'));
  // One self-signed certificate serves as CA, server and client certificate: enough to exercise the TLS dispatch.
  execFileSync(
    'openssl',
    [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'self.key',
      '-out', 'self.crt', '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
    ],
    { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const cert = readFileSync(join(dir, 'self.crt'), 'utf8');
  tls = { ca: cert, cert, key: readFileSync(join(dir, 'self.key'), 'utf8') };
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Listens, connects, sends one byte each way, closes; returns what each side got and the client's peer. */
async function exchange(listenAt: Endpoint, connectTo: (listener: Listener) => Endpoint, withTls: boolean): Promise<{ atServer: number[]; atClient: number[]; peer: string }> {
  let serverGot!: Promise<number[]>;
  const listener = await listen(
    listenAt,
    (c) => {
      c.write([Uint8Array.of(2)]);
      serverGot = received(c);
    },
    withTls ? { tls } : {},
  );
  try {
    const client = await connect(connectTo(listener), withTls ? { tls } : {});
    const firstChunk = new Promise<number[]>((resolve) => client.on('data', (chunk) => resolve([...chunk])));
    client.write([Uint8Array.of(1)]);
    const atClient = await firstChunk;
    client.close();
    return { atServer: await serverGot, atClient, peer: client.peer };
  } finally {
    await listener.close();
  }
}

/** Everything a connection receives until it closes. */
function received(connection: Connection): Promise<number[]> {
  const bytes: number[] = [];
  connection.on('data', (chunk) => bytes.push(...chunk));
  return new Promise((resolve) => connection.on('close', () => resolve(bytes)));
}

describe('connect and listen by endpoint', () => {
  it('dispatches host/port to TCP', async () => {
    const result = await exchange({ host: '127.0.0.1', port: 0 }, (l) => ({ host: '127.0.0.1', port: l.port }), false);
    expect(result.atServer).toEqual([1]);
    expect(result.atClient).toEqual([2]);
    expect(result.peer).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  it('dispatches a path to a Unix socket', async () => {
    const path = join(dir, 'e.sock');
    const result = await exchange({ path }, () => ({ path }), false);
    expect(result.atServer).toEqual([1]);
    expect(result.atClient).toEqual([2]);
    expect(result.peer).toBe(path);
  });

  it('dispatches host/port with tls to mutual TLS', async () => {
    const result = await exchange({ host: '127.0.0.1', port: 0 }, (l) => ({ host: '127.0.0.1', port: l.port }), true);
    expect(result.atServer).toEqual([1]);
    expect(result.atClient).toEqual([2]);
  });

  it('a plain client cannot talk to a TLS listener, which reports the refusal', async () => {
    const refusals: KemariError[] = [];
    let refused!: () => void;
    const gotRefusal = new Promise<void>((resolve) => (refused = resolve));
    const accepted: Connection[] = [];
    const listener = await listen({ host: '127.0.0.1', port: 0 }, (c) => accepted.push(c), {
      tls,
      onRefused: (error) => {
        refusals.push(error);
        refused();
      },
    });
    try {
      const client = await connect({ host: '127.0.0.1', port: listener.port });
      client.on('data', () => {});
      client.write([new TextEncoder().encode('not a TLS ClientHello\r\n')]);
      await gotRefusal;
      expect(refusals[0]?.code).toBe('KEMARI_TLS_REFUSED');
      expect(accepted).toEqual([]);
      client.close();
    } finally {
      await listener.close();
    }
  });

  it('rejects tls with a path, and endpoints that are neither or both, with KEMARI_INVALID_ARGUMENT', async () => {
    const path = join(dir, 'never.sock');
    await expect(connect({ path }, { tls })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(listen({ path }, () => {}, { tls })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    const both = { path, host: '127.0.0.1', port: 1 } as unknown as Endpoint;
    await expect(connect(both)).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(connect({} as Endpoint)).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(connect(null as unknown as Endpoint)).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
  });

  it('passes signal and timeoutMs through', async () => {
    await expect(connect({ host: '127.0.0.1', port: 1 }, { signal: AbortSignal.abort() })).rejects.toMatchObject({
      code: 'KEMARI_ABORTED',
    });
    await expect(connect({ path: join(dir, 'x.sock') }, { timeoutMs: -5 })).rejects.toMatchObject({
      code: 'KEMARI_INVALID_ARGUMENT',
    });
  });
});
