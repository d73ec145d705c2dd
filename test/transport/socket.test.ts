/**
 * The plain socket transports, TCP on loopback and a Unix socket in a temp dir, through one shared suite: integrity
 * and order of many batches, large writes under backpressure, close semantics, connect failures and aborts.
 */
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { KemariError, isKemariError } from '../../src/errors.js';
import type { Connection } from '../../src/transport/connection.js';
import { SocketConnection } from '../../src/transport/socket-connection.js';
import { connectTcp, listenTcp } from '../../src/transport/tcp.js';
import type { Listener } from '../../src/transport/tcp.js';
import { connectUnix, listenUnix } from '../../src/transport/unix.js';

let dir = '';
let pathCounter = 0;
const cleanups: (() => unknown)[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kemari-sock-'));
});
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function socketPath(): string {
  return join(dir, `s${pathCounter++}.sock`);
}

/** One plain socket transport as the shared suite sees it. */
interface Transport {
  name: string;
  listen(onConnection: (c: Connection) => void): Promise<Listener>;
  connect(listener: Listener, options?: { signal?: AbortSignal; timeoutMs?: number }): Promise<Connection>;
  /** Connects a raw Node socket (for tests of SocketConnection itself). */
  rawConnect(listener: Listener): Socket;
  /** A target nobody listens on. */
  deadConnect(): Promise<Connection>;
}

const tcp: Transport = {
  name: 'tcp',
  listen: (onConnection) => listenTcp({ host: '127.0.0.1', port: 0 }, onConnection),
  connect: (listener, options = {}) => connectTcp({ host: '127.0.0.1', port: listener.port, ...options }),
  rawConnect: (listener) => createConnection({ host: '127.0.0.1', port: listener.port }),
  deadConnect: async () => {
    const listener = await listenTcp({ host: '127.0.0.1', port: 0 }, () => {});
    const port = listener.port;
    await listener.close();
    return connectTcp({ host: '127.0.0.1', port });
  },
};

const unix: Transport = {
  name: 'unix',
  listen: (onConnection) => listenUnix({ path: socketPath() }, onConnection),
  connect: (listener, options = {}) => connectUnix({ path: listener.address, ...options }),
  rawConnect: (listener) => createConnection({ path: listener.address }),
  deadConnect: () => connectUnix({ path: socketPath() }),
};

/** Counts and records close events; `closed` resolves with the first. */
function watchClose(connection: Connection): { count: () => number; closed: Promise<KemariError | undefined> } {
  let count = 0;
  const closed = new Promise<KemariError | undefined>((resolve) => {
    connection.on('close', (error) => {
      count++;
      resolve(error);
    });
  });
  return { count: () => count, closed };
}

/** Hashes everything a connection receives; `ended` resolves at close with the totals. */
function sink(connection: Connection): Promise<{ bytes: number; sha256: string; error: KemariError | undefined }> {
  const hash = createHash('sha256');
  let bytes = 0;
  connection.on('data', (chunk) => {
    bytes += chunk.length;
    hash.update(chunk);
  });
  return new Promise((resolve) => connection.on('close', (error) => resolve({ bytes, sha256: hash.digest('hex'), error })));
}

function waitFor(connection: Connection, event: 'drain'): Promise<void> {
  return new Promise((resolve) => {
    const listener = (): void => {
      connection.off(event, listener);
      resolve();
    };
    connection.on(event, listener);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Listens, connects, and returns both ends (server side first to arrive). */
async function pair(transport: Transport): Promise<{ client: Connection; server: Connection; listener: Listener }> {
  let accept!: (c: Connection) => void;
  const accepted = new Promise<Connection>((resolve) => (accept = resolve));
  const listener = await transport.listen((c) => accept(c));
  cleanups.push(() => listener.close());
  const client = await transport.connect(listener);
  cleanups.push(() => client.close(new KemariError('KEMARI_CONNECTION_CLOSED', 'test cleanup')));
  const server = await accepted;
  return { client, server, listener };
}

/** Writes `totalBytes` in batches of up to `batchBytes` (each as header + body parts), honouring drain. */
async function writeStream(
  connection: Connection,
  totalBytes: number,
  batchBytes: number,
): Promise<{ sha256: string; falses: number; drains: number; bufferedBytesMax: number }> {
  const hash = createHash('sha256');
  const source = randomBytes(batchBytes);
  let drains = 0;
  connection.on('drain', () => drains++);
  let falses = 0;
  let bufferedBytesMax = 0;
  for (let written = 0; written < totalBytes; ) {
    const bytes = Math.min(batchBytes, totalBytes - written);
    const header = new Uint8Array(8);
    new DataView(header.buffer).setFloat64(0, written);
    const body = source.subarray(0, bytes - Math.min(8, bytes));
    const parts = [header.subarray(0, Math.min(8, bytes)), body];
    for (const part of parts) hash.update(part);
    written += bytes;
    const ok = connection.write(parts);
    bufferedBytesMax = Math.max(bufferedBytesMax, connection.bufferedBytes);
    if (!ok) {
      falses++;
      await waitFor(connection, 'drain');
    }
  }
  return { sha256: hash.digest('hex'), falses, drains, bufferedBytesMax };
}

describe.each([tcp, unix])('$name transport', (transport) => {
  it('carries many batches both ways intact and in order', async () => {
    const { client, server } = await pair(transport);
    const toServer = sink(server);
    const toClient = sink(client);
    const sent = { client: createHash('sha256'), server: createHash('sha256') };
    let bytes = 0;
    for (let i = 0; i < 3000; i++) {
      // Varying sizes and 1 to 3 parts per batch, so misordered or dropped parts change the hash.
      const parts = Array.from({ length: 1 + (i % 3) }, (_, j) => randomBytes(1 + ((i * 37 + j * 101) % 700)));
      for (const part of parts) {
        sent.client.update(part);
        bytes += part.length;
      }
      client.write(parts);
      const reply = [Uint8Array.of(i & 0xff, i >>> 8)];
      sent.server.update(reply[0] as Uint8Array);
      server.write(reply);
    }
    client.close();
    const [atServer, atClient] = await Promise.all([toServer, toClient]);
    expect(atServer).toEqual({ bytes, sha256: sent.client.digest('hex'), error: undefined });
    expect(atClient).toEqual({ bytes: 6000, sha256: sent.server.digest('hex'), error: undefined });
  });

  it('writes a batch corked, passing the very chunks (no copies) to the socket', async () => {
    let accept!: (c: Connection) => void;
    const accepted = new Promise<Connection>((resolve) => (accept = resolve));
    const listener = await transport.listen((c) => accept(c));
    cleanups.push(() => listener.close());
    const socket = transport.rawConnect(listener);
    await new Promise((resolve) => socket.once('connect', resolve));
    const connection = new SocketConnection(socket, { peer: 'test' });
    cleanups.push(() => connection.close(new KemariError('KEMARI_CONNECTION_CLOSED', 'cleanup')));
    const server = await accepted;
    const received = sink(server);
    const cork = vi.spyOn(socket, 'cork');
    const uncork = vi.spyOn(socket, 'uncork');
    const write = vi.spyOn(socket, 'write');
    const parts = [Uint8Array.of(1, 2, 3), new Uint8Array(100_000).fill(7), Uint8Array.of(9)];
    connection.write(parts);
    expect(cork).toHaveBeenCalledTimes(1);
    expect(uncork).toHaveBeenCalledTimes(1);
    expect(write).toHaveBeenCalledTimes(parts.length);
    parts.forEach((part, i) => expect(write.mock.calls[i]?.[0]).toBe(part));
    expect(cork.mock.invocationCallOrder[0]).toBeLessThan(write.mock.invocationCallOrder[0] as number);
    expect(uncork.mock.invocationCallOrder[0]).toBeGreaterThan(write.mock.invocationCallOrder[2] as number);
    connection.close();
    expect((await received).bytes).toBe(100_004);
  });

  it('moves 64 MiB honouring backpressure: every false is followed by one drain, the buffer stays bounded', async () => {
    const { client, server } = await pair(transport);
    const received = sink(server);
    const batchBytes = 1 << 20;
    const result = await writeStream(client, 64 << 20, batchBytes);
    client.close();
    const atServer = await received;
    expect(atServer.bytes).toBe(64 << 20);
    expect(atServer.sha256).toBe(result.sha256);
    expect(result.falses).toBeGreaterThan(0);
    expect(result.drains).toBe(result.falses);
    // Never more than one batch on top of the high-water mark: the writer really waited.
    expect(result.bufferedBytesMax).toBeLessThanOrEqual(batchBytes + 16 * 1024);
  });

  it('holds bytes back while the peer does not read, and lets them through when it does', async () => {
    const { client, server } = await pair(transport);
    const chunk = randomBytes(256 * 1024);
    const hash = createHash('sha256');
    let written = 0;
    let stalled = false;
    // Write until the kernel buffers are full and 'drain' stops coming (the server has no 'data' listener yet).
    while (written < 256 << 20) {
      hash.update(chunk);
      written += chunk.length;
      if (client.write([chunk])) continue;
      const drained = await Promise.race([waitFor(client, 'drain').then(() => true), sleep(300).then(() => false)]);
      if (!drained) {
        stalled = true;
        break;
      }
    }
    expect(stalled).toBe(true);
    expect(client.bufferedBytes).toBeGreaterThan(0);
    const drain = waitFor(client, 'drain');
    const received = sink(server);
    await drain;
    client.close();
    const atServer = await received;
    expect(atServer.bytes).toBe(written);
    expect(atServer.sha256).toBe(hash.digest('hex'));
  });

  it('keeps bytes that arrive before the first data listener', async () => {
    let accept!: (c: Connection) => void;
    const accepted = new Promise<Connection>((resolve) => (accept = resolve));
    const listener = await transport.listen((c) => {
      c.write([Uint8Array.of(1, 2, 3)]);
      c.write([Uint8Array.of(4)]);
      accept(c);
    });
    cleanups.push(() => listener.close());
    const client = await transport.connect(listener);
    await accepted;
    await sleep(50);
    const chunks: number[] = [];
    const got = new Promise<void>((resolve) =>
      client.on('data', (chunk) => {
        chunks.push(...chunk);
        if (chunks.length === 4) resolve();
      }),
    );
    await got;
    expect(chunks).toEqual([1, 2, 3, 4]);
    client.close();
  });

  it('graceful close delivers everything written before it, and each side emits close exactly once with undefined', async () => {
    const { client, server } = await pair(transport);
    const received = sink(server);
    const serverClose = watchClose(server);
    const clientClose = watchClose(client);
    const payload = randomBytes(4 << 20);
    client.write([payload.subarray(0, 1000), payload.subarray(1000)]);
    client.close();
    expect(client.closed).toBe(true);
    expect(client.write([Uint8Array.of(1)])).toBe(false);
    client.close();
    const atServer = await received;
    expect(atServer.bytes).toBe(payload.length);
    expect(atServer.sha256).toBe(createHash('sha256').update(payload).digest('hex'));
    expect(await serverClose.closed).toBeUndefined();
    expect(await clientClose.closed).toBeUndefined();
    client.close();
    server.close();
    client.close(new KemariError('KEMARI_CONNECTION_CLOSED', 'late'));
    await sleep(30);
    expect(clientClose.count()).toBe(1);
    expect(serverClose.count()).toBe(1);
    expect(server.closed).toBe(true);
    expect(() => server.write([Uint8Array.of(1)])).not.toThrow();
    expect(server.write([Uint8Array.of(1)])).toBe(false);
  });

  it('graceful close completes even on a side that never listened for data', async () => {
    const { client, server } = await pair(transport);
    const received = sink(server);
    const clientClose = watchClose(client);
    server.write([Uint8Array.of(1, 2, 3)]);
    client.write([Uint8Array.of(4)]);
    client.close();
    const outcome = await Promise.race([clientClose.closed.then((error) => ({ error })), sleep(3000).then(() => 'hung')]);
    expect(outcome).toEqual({ error: undefined });
    expect((await received).bytes).toBe(1);
  });

  it('close(error) closes at once: this side reports that error, the other side closes exactly once', async () => {
    const { client, server } = await pair(transport);
    const serverClose = watchClose(server);
    const clientClose = watchClose(client);
    server.on('data', () => {});
    const error = new KemariError('KEMARI_PROTOCOL', 'test abort');
    client.write([randomBytes(1 << 20)]);
    client.close(error);
    client.close(error);
    client.close();
    expect(await clientClose.closed).toBe(error);
    // The peer only learns the socket ended (cleanly, or with a reset if bytes were in flight).
    const atServer = await serverClose.closed;
    expect(atServer === undefined || isKemariError(atServer, 'KEMARI_CONNECTION_CLOSED')).toBe(true);
    expect(server.closed).toBe(true);
    await sleep(30);
    expect(clientClose.count()).toBe(1);
    expect(serverClose.count()).toBe(1);
  });

  it('a close(error) after close() aborts the graceful end', async () => {
    const { client, server } = await pair(transport);
    const clientClose = watchClose(client);
    client.close();
    const error = new KemariError('KEMARI_PROTOCOL', 'escalate');
    client.close(error);
    expect(await clientClose.closed).toBe(error);
    server.close();
  });

  it('listener.close() closes the connections it handed out and stops accepting', async () => {
    const { client, server, listener } = await pair(transport);
    const serverClose = watchClose(server);
    const clientClose = watchClose(client);
    client.on('data', () => {});
    const closing = listener.close();
    expect(listener.close()).toBe(closing);
    await closing;
    const atServer = await serverClose.closed;
    expect(isKemariError(atServer, 'KEMARI_CONNECTION_CLOSED')).toBe(true);
    await clientClose.closed;
    await expect(transport.connect(listener)).rejects.toMatchObject({ code: 'KEMARI_CONNECT_FAILED' });
    expect(serverClose.count()).toBe(1);
  });

  it('names the peer', async () => {
    const { client, server, listener } = await pair(transport);
    if (transport.name === 'tcp') {
      expect(listener.port).toBeGreaterThan(0);
      expect(listener.address).toBe('127.0.0.1');
      expect(client.peer).toBe(`127.0.0.1:${listener.port}`);
      expect(server.peer).toMatch(/^127\.0\.0\.1:\d+$/);
    } else {
      expect(listener.port).toBe(0);
      expect(client.peer).toBe(listener.address);
      expect(server.peer).toBe(listener.address);
    }
  });

  it('rejects with KEMARI_CONNECT_FAILED when nobody listens', async () => {
    const error = await transport.deadConnect().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isKemariError(error, 'KEMARI_CONNECT_FAILED')).toBe(true);
    expect((error as KemariError).details.socketCode).toMatch(/^(ECONNREFUSED|ENOENT)$/);
  });

  it('rejects with KEMARI_ABORTED for an aborted signal, before or during the connect', async () => {
    const connections: Connection[] = [];
    const listener = await transport.listen((c) => connections.push(c));
    cleanups.push(() => listener.close());
    await expect(transport.connect(listener, { signal: AbortSignal.abort('before') })).rejects.toMatchObject({
      code: 'KEMARI_ABORTED',
    });
    const controller = new AbortController();
    const connecting = transport.connect(listener, { signal: controller.signal });
    controller.abort(new Error('during'));
    const error = await connecting.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isKemariError(error, 'KEMARI_ABORTED')).toBe(true);
    expect(((error as KemariError).cause as Error).message).toBe('during');
    // After an abort the transport still works.
    const client = await transport.connect(listener);
    expect(client.closed).toBe(false);
    client.close();
  });

  it('rejects bad arguments with KEMARI_INVALID_ARGUMENT', async () => {
    const listener = await transport.listen(() => {});
    cleanups.push(() => listener.close());
    await expect(transport.connect(listener, { timeoutMs: 0 })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(transport.connect(listener, { timeoutMs: Number.NaN })).rejects.toMatchObject({
      code: 'KEMARI_INVALID_ARGUMENT',
    });
  });
});

describe('tcp arguments', () => {
  it('rejects bad hosts and ports with KEMARI_INVALID_ARGUMENT', async () => {
    await expect(connectTcp({ host: '', port: 1 })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(connectTcp({ host: '127.0.0.1', port: 0 })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(connectTcp({ host: '127.0.0.1', port: 65_536 })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(connectTcp({ host: '127.0.0.1', port: 1.5 })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(listenTcp({ host: '127.0.0.1', port: -1 }, () => {})).rejects.toMatchObject({
      code: 'KEMARI_INVALID_ARGUMENT',
    });
  });

  it('reports a port in use as KEMARI_LISTEN_FAILED (EADDRINUSE)', async () => {
    const first = await listenTcp({ host: '127.0.0.1', port: 0 }, () => {});
    cleanups.push(() => first.close());
    await expect(listenTcp({ host: '127.0.0.1', port: first.port }, () => {})).rejects.toMatchObject({
      code: 'KEMARI_LISTEN_FAILED',
      details: { socketCode: 'EADDRINUSE' },
    });
  });
});

describe('unix socket file handling', () => {
  it('removes a stale socket file left by a dead listener, and the file on close', async () => {
    const path = socketPath();
    // A process that binds the path and exits without closing leaves a stale socket file behind.
    execFileSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => process.exit(0))`]);
    expect(existsSync(path)).toBe(true);
    await expect(connectUnix({ path })).rejects.toMatchObject({ code: 'KEMARI_CONNECT_FAILED' });
    const accepted: Connection[] = [];
    const listener = await listenUnix({ path }, (c) => accepted.push(c));
    const client = await connectUnix({ path });
    const closed = watchClose(client);
    client.on('data', () => {});
    await listener.close();
    await closed.closed;
    expect(accepted).toHaveLength(1);
    expect(existsSync(path)).toBe(false);
  });

  it('leaves a live listener alone', async () => {
    const path = socketPath();
    const live = await listenUnix({ path }, () => {});
    cleanups.push(() => live.close());
    await expect(listenUnix({ path }, () => {})).rejects.toMatchObject({
      code: 'KEMARI_LISTEN_FAILED',
      details: { socketCode: 'EADDRINUSE' },
    });
    const client = await connectUnix({ path });
    expect(client.closed).toBe(false);
    client.close();
  });

  it('never deletes a path that is not a socket', async () => {
    const path = join(dir, 'not-a-socket');
    writeFileSync(path, 'precious');
    await expect(listenUnix({ path }, () => {})).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    expect(existsSync(path)).toBe(true);
  });

  it('rejects an empty path', async () => {
    await expect(connectUnix({ path: '' })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(listenUnix({ path: '' }, () => {})).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
  });
});
