/**
 * Mutual TLS over loopback with certificates made by the openssl CLI at test time: a CA, a server certificate for
 * 127.0.0.1/localhost, a client certificate, and a rogue client certificate signed by a second CA.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer as createNetServer } from 'node:net';
import type { Server as NetServer, Socket } from 'node:net';
import { connect as rawTlsConnect, createServer as createRawTlsServer } from 'node:tls';
import type { TLSSocket } from 'node:tls';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { KemariError, isKemariError } from '../../src/errors.js';
import type { Connection } from '../../src/transport/connection.js';
import type { Listener } from '../../src/transport/tcp.js';
import { TLS_CONFIRM_BYTE, connectTls, listenTls } from '../../src/transport/tls.js';
import { makeTestPki } from '../helpers/pki.js';
import type { TestPki } from '../helpers/pki.js';
import type { TlsCredentials } from '../../src/transport/tls.js';

let pki: TestPki;
const cleanups: (() => unknown)[] = [];

beforeAll(() => {
  pki = makeTestPki();
});
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

function credentials(name: 'server' | 'client' | 'rogue', ca: 'ca' | 'rogue-ca' = 'ca'): TlsCredentials {
  return pki.credentials(name, ca);
}

/** A TLS listener that records what it accepted and refused. */
async function server(
  onConnection: (c: Connection) => void = () => {},
  handshakeTimeoutMs?: number,
): Promise<{ listener: Listener; accepted: Connection[]; refused: KemariError[]; nextRefusal: () => Promise<KemariError> }> {
  const accepted: Connection[] = [];
  const refused: KemariError[] = [];
  const waiters: ((e: KemariError) => void)[] = [];
  const listener = await listenTls(
    { host: '127.0.0.1', port: 0, ...credentials('server'), ...(handshakeTimeoutMs === undefined ? {} : { handshakeTimeoutMs }) },
    (c) => {
      accepted.push(c);
      cleanups.push(() => c.close(new KemariError('KEMARI_CONNECTION_CLOSED', 'cleanup')));
      onConnection(c);
    },
    (error) => {
      refused.push(error);
      waiters.shift()?.(error);
    },
  );
  cleanups.push(() => listener.close());
  const nextRefusal = (): Promise<KemariError> =>
    refused.length > waiters.length ? Promise.resolve(refused[waiters.length] as KemariError) : new Promise((resolve) => waiters.push(resolve));
  return { listener, accepted, refused, nextRefusal };
}

function sink(connection: Connection): Promise<{ bytes: number; sha256: string; first: number | undefined }> {
  const hash = createHash('sha256');
  let bytes = 0;
  let first: number | undefined;
  connection.on('data', (chunk) => {
    first ??= chunk[0];
    bytes += chunk.length;
    hash.update(chunk);
  });
  return new Promise((resolve) => connection.on('close', () => resolve({ bytes, sha256: hash.digest('hex'), first })));
}

async function rejection(promise: Promise<unknown>): Promise<KemariError> {
  const outcome = await promise.then(
    () => new Error('expected a rejection'),
    (e: unknown) => e,
  );
  if (!(outcome instanceof KemariError)) throw outcome;
  return outcome;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe('mutual TLS', () => {
  it('carries batches both ways intact; the confirmation byte never shows up as data', async () => {
    const greeting = Uint8Array.of(0x41, 0x42, 0x43);
    let serverSide!: Promise<{ bytes: number; sha256: string; first: number | undefined }>;
    let serverConnection!: Connection;
    const { listener, refused } = await server((c) => {
      serverConnection = c;
      // Written at once, so it can share a TLS record with the server's confirmation byte.
      c.write([greeting]);
      serverSide = sink(c);
    });
    const client = await connectTls({ host: '127.0.0.1', port: listener.port, ...credentials('client') });
    const clientSide = sink(client);
    const sent = createHash('sha256');
    let bytes = 0;
    for (let i = 0; i < 500; i++) {
      const parts = [randomBytes(1 + (i % 50)), randomBytes(1 + ((i * 97) % 3000))];
      for (const part of parts) {
        sent.update(part);
        bytes += part.length;
      }
      client.write(parts);
    }
    client.close();
    const [atServer, atClient] = await Promise.all([serverSide, clientSide]);
    expect(atServer.bytes).toBe(bytes);
    expect(atServer.sha256).toBe(sent.digest('hex'));
    expect(atClient.bytes).toBe(greeting.length);
    expect(atClient.first).toBe(0x41);
    expect(atClient.sha256).toBe(createHash('sha256').update(greeting).digest('hex'));
    expect(refused).toEqual([]);
    expect(client.peer).toBe(`127.0.0.1:${listener.port}`);
    expect(serverConnection.peer).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  it('moves 16 MiB under backpressure', async () => {
    let serverSide!: Promise<{ bytes: number; sha256: string; first: number | undefined }>;
    const { listener } = await server((c) => (serverSide = sink(c)));
    const client = await connectTls({ host: '127.0.0.1', port: listener.port, ...credentials('client') });
    const body = randomBytes(1 << 20);
    const sent = createHash('sha256');
    let falses = 0;
    for (let i = 0; i < 16; i++) {
      const header = Uint8Array.of(i, 0, 0, 0);
      sent.update(header).update(body);
      if (!client.write([header, body])) {
        falses++;
        await new Promise<void>((resolve) => {
          const onDrain = (): void => {
            client.off('drain', onDrain);
            resolve();
          };
          client.on('drain', onDrain);
        });
      }
    }
    client.close();
    const atServer = await serverSide;
    expect(falses).toBeGreaterThan(0);
    expect(atServer.bytes).toBe(16 * ((1 << 20) + 4));
    expect(atServer.sha256).toBe(sent.digest('hex'));
  });

  it('checks the server name: localhost matches, another name is refused', async () => {
    const { listener } = await server();
    const ok = await connectTls({ host: '127.0.0.1', port: listener.port, servername: 'localhost', ...credentials('client') });
    expect(ok.closed).toBe(false);
    ok.close();
    const error = await rejection(
      connectTls({ host: '127.0.0.1', port: listener.port, servername: 'elsewhere.example', ...credentials('client') }),
    );
    expect(error.code).toBe('KEMARI_TLS_REFUSED');
    expect(error.details.socketCode).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
  });

  it('refuses a client whose certificate is signed by another CA, on both sides', async () => {
    const { listener, accepted, nextRefusal } = await server();
    const refusal = nextRefusal();
    const error = await rejection(connectTls({ host: '127.0.0.1', port: listener.port, ...credentials('rogue') }));
    expect(error.code).toBe('KEMARI_TLS_REFUSED');
    const atServer = await refusal;
    expect(atServer.code).toBe('KEMARI_TLS_REFUSED');
    expect(String(atServer.details.reason)).toMatch(/UNABLE_TO_|CERT|ISSUER/);
    expect(accepted).toEqual([]);
  });

  it('refuses a client with the rogue certificate over TLS 1.2 too', async () => {
    const { listener, accepted, nextRefusal } = await server();
    const refusal = nextRefusal();
    const outcome = await rawClient(listener.port, { ...credentials('rogue'), maxVersion: 'TLSv1.2' });
    expect(outcome.confirmed).toBe(false);
    expect((await refusal).code).toBe('KEMARI_TLS_REFUSED');
    expect(accepted).toEqual([]);
  });

  it('refuses a client that presents no certificate', async () => {
    const { listener, accepted, nextRefusal } = await server();
    const refusal = nextRefusal();
    const outcome = await rawClient(listener.port, { ca: pki.pem['ca.crt']! });
    expect(outcome.confirmed).toBe(false);
    const atServer = await refusal;
    expect(atServer.code).toBe('KEMARI_TLS_REFUSED');
    expect(atServer.details.reason).toBe('ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE');
    expect(atServer.details.peer).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(accepted).toEqual([]);
  });

  it('a client trusting a different CA refuses the server, and the server reports the refusal', async () => {
    const { listener, accepted, nextRefusal } = await server();
    const refusal = nextRefusal();
    const error = await rejection(connectTls({ host: '127.0.0.1', port: listener.port, ...credentials('client', 'rogue-ca') }));
    expect(error.code).toBe('KEMARI_TLS_REFUSED');
    expect(String(error.details.socketCode)).toMatch(/SELF_SIGNED|UNABLE_TO/);
    const atServer = await refusal;
    expect(atServer.code).toBe('KEMARI_TLS_REFUSED');
    await sleep(20);
    expect(accepted).toEqual([]);
  });

  it('refuses a server that completes TLS but never confirms with the kemari byte', async () => {
    const sockets = new Set<Socket>();
    const raw = createRawTlsServer({ ...credentials('server'), requestCert: true, rejectUnauthorized: true }, (socket) => {
      sockets.add(socket);
      socket.on('error', () => {});
      socket.resume();
      socket.write('X');
    });
    await new Promise<void>((resolve) => raw.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => raw.close(resolve));
    });
    const port = (raw.address() as { port: number }).port;
    const error = await rejection(connectTls({ host: '127.0.0.1', port, ...credentials('client') }));
    expect(error.code).toBe('KEMARI_TLS_REFUSED');
    expect(error.details.firstByte).toBe('X'.charCodeAt(0));
  });

  it('delivers bytes that share a TLS record with the confirmation byte', async () => {
    const sockets = new Set<Socket>();
    const raw = createRawTlsServer({ ...credentials('server'), requestCert: true, rejectUnauthorized: true }, (socket) => {
      sockets.add(socket);
      socket.on('error', () => {});
      socket.resume();
      // One write, one record: the client must strip the first byte and keep the rest.
      socket.write(Uint8Array.of(TLS_CONFIRM_BYTE, 0x41, 0x42));
    });
    await new Promise<void>((resolve) => raw.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => raw.close(resolve));
    });
    const port = (raw.address() as { port: number }).port;
    const client = await connectTls({ host: '127.0.0.1', port, ...credentials('client') });
    cleanups.push(() => client.close(new KemariError('KEMARI_CONNECTION_CLOSED', 'cleanup')));
    const got: number[] = [];
    await new Promise<void>((resolve) =>
      client.on('data', (chunk) => {
        got.push(...chunk);
        if (got.length >= 2) resolve();
      }),
    );
    expect(got).toEqual([0x41, 0x42]);
  });

  it('refuses a client that completes TLS but never confirms, after handshakeTimeoutMs', async () => {
    const { listener, accepted, nextRefusal } = await server(() => {}, 300);
    const refusal = nextRefusal();
    const started = Date.now();
    const outcome = await rawClient(listener.port, credentials('client'), { silent: true });
    expect(outcome.confirmed).toBe(true);
    const atServer = await refusal;
    expect(atServer.code).toBe('KEMARI_TLS_REFUSED');
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(accepted).toEqual([]);
  });

  it('times out (KEMARI_CONNECT_FAILED) or aborts (KEMARI_ABORTED) against a server that never answers', async () => {
    const sockets = new Set<Socket>();
    const silent: NetServer = createNetServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => {});
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => silent.close(resolve));
    });
    const port = (silent.address() as { port: number }).port;
    const started = Date.now();
    const timedOut = await rejection(connectTls({ host: '127.0.0.1', port, timeoutMs: 200, ...credentials('client') }));
    expect(timedOut.code).toBe('KEMARI_CONNECT_FAILED');
    expect(timedOut.details).toMatchObject({ timeoutMs: 200, stage: 'handshaking' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
    const controller = new AbortController();
    const connecting = connectTls({ host: '127.0.0.1', port, signal: controller.signal, ...credentials('client') });
    setTimeout(() => controller.abort(), 50);
    expect((await rejection(connecting)).code).toBe('KEMARI_ABORTED');
  });

  it('closes a listener with a handshake in progress promptly, without reporting it as refused', async () => {
    const { listener, refused } = await server();
    const { Socket: NetSocket } = await import('node:net');
    const socket = new NetSocket();
    socket.on('error', () => {});
    const closed = new Promise((resolve) => socket.on('close', resolve));
    await new Promise<void>((resolve) => socket.connect(listener.port, '127.0.0.1', resolve));
    await sleep(20);
    const started = Date.now();
    await listener.close();
    await closed;
    expect(Date.now() - started).toBeLessThan(2000);
    expect(refused).toEqual([]);
  });

  it('rejects bad credentials with KEMARI_INVALID_ARGUMENT', async () => {
    const good = credentials('client');
    await expect(connectTls({ host: '127.0.0.1', port: 1, ...good, cert: '' })).rejects.toMatchObject({
      code: 'KEMARI_INVALID_ARGUMENT',
    });
    await expect(connectTls({ host: '127.0.0.1', port: 1, ...good, key: 'not a key' })).rejects.toMatchObject({
      code: 'KEMARI_INVALID_ARGUMENT',
    });
    await expect(listenTls({ host: '127.0.0.1', port: 0, ...credentials('server'), cert: 'garbage' }, () => {})).rejects.toMatchObject({
      code: 'KEMARI_INVALID_ARGUMENT',
    });
    await expect(
      listenTls({ host: '127.0.0.1', port: 0, ...credentials('server'), handshakeTimeoutMs: -1 }, () => {}),
    ).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
  });
});

/**
 * A plain Node TLS client against a kemari listener. `confirmed`: the server's confirmation byte arrived. Unless
 * `silent`, it sends its own confirmation back; it ends when the server closes.
 */
async function rawClient(
  port: number,
  options: { ca: string | Buffer; cert?: string | Buffer; key?: string | Buffer; maxVersion?: 'TLSv1.2' },
  { silent = false } = {},
): Promise<{ confirmed: boolean; error: Error | undefined }> {
  const socket: TLSSocket = rawTlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: true, ...options });
  let confirmed = false;
  let error: Error | undefined;
  socket.on('data', (chunk: Buffer) => {
    if (chunk[0] === TLS_CONFIRM_BYTE) confirmed = true;
    if (!silent) socket.write(Uint8Array.of(TLS_CONFIRM_BYTE));
  });
  socket.on('error', (e) => (error = e));
  await new Promise((resolve) => socket.on('close', resolve));
  expect(isKemariError(error)).toBe(false);
  return { confirmed, error };
}
