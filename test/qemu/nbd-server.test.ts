/** The NBD server driver over real sockets, driven by a raw client that misbehaves on purpose. */
import { existsSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { KemariError } from '../../src/errors.js';
import type { NbdBackend } from '../../src/qemu/nbd/nbd-backend.js';
import { NBD_CLIENT_FLAG, NBD_CMD, NBD_CMD_FLAG, NBD_ERROR, NBD_OPT, NBD_REP } from '../../src/qemu/nbd/nbd-constants.js';
import { MemoryNbdBackend } from '../../src/qemu/nbd/memory-nbd-backend.js';
import { NbdServer } from '../../src/qemu/nbd/nbd-server.js';
import type { NbdServerOptions } from '../../src/qemu/nbd/nbd-server.js';
import { RawNbdClient } from '../helpers/nbd-raw-client.js';
import { tempDir, waitFor } from '../helpers/nbd-tools.js';
import { clientFlags, concat, decodeInfoExport, infoData, option, request } from '../helpers/nbd-wire.js';

const SIZE = 1 << 20;
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

interface Setup {
  server: NbdServer;
  backend: MemoryNbdBackend;
  writes: Array<{ offset: number; data: Uint8Array }>;
  errors: KemariError[];
  path: string;
  connect: () => Promise<RawNbdClient>;
}

async function setup(options: Partial<NbdServerOptions> = {}): Promise<Setup> {
  const { dir, remove } = tempDir();
  cleanups.push(remove);
  const path = join(dir, 'nbd.sock');
  const backend = new MemoryNbdBackend(SIZE);
  const writes: Setup['writes'] = [];
  const errors: KemariError[] = [];
  const server = await NbdServer.listen({
    backend,
    path,
    onWrite: (offset, data) => {
      writes.push({ offset, data });
    },
    onClientError: (error) => errors.push(error),
    ...options,
  });
  cleanups.push(() => server.close());
  const connect = async (): Promise<RawNbdClient> => {
    const client = await RawNbdClient.connect(path);
    cleanups.push(() => client.destroy());
    return client;
  };
  return { server, backend, writes, errors, path, connect };
}

const pattern = (length: number, seed: number): Uint8Array => Uint8Array.from({ length }, (_, i) => (i * 31 + seed) & 0xff);

describe('serving a raw client', () => {
  it('writes reach the observer in order, before the reply, and read back exactly', async () => {
    const { connect, writes, backend, server } = await setup();
    const client = await connect();
    const infos = await client.handshake();
    expect(decodeInfoExport(infos[0]!.data).sizeBytes).toBe(BigInt(SIZE));
    const a = pattern(4096, 1);
    const b = pattern(100, 2);
    client.write(concat(request(NBD_CMD.WRITE, 1n, 0, a.length, { data: a }), request(NBD_CMD.WRITE, 2n, 10, b.length, { data: b, flags: NBD_CMD_FLAG.FUA })));
    expect(await client.readReply()).toMatchObject({ error: 0, handle: 1n });
    expect(writes.length).toBeGreaterThanOrEqual(1); // observed before the client heard of it
    expect(await client.readReply()).toMatchObject({ error: 0, handle: 2n });
    expect(writes.map((w) => [w.offset, w.data.length])).toEqual([
      [0, 4096],
      [10, 100],
    ]);
    expect(writes[1]!.data).toEqual(b);
    client.write(request(NBD_CMD.READ, 3n, 0, 200));
    const read = await client.readReply(200);
    const expected = a.slice(0, 200);
    expected.set(b, 10);
    expect(read.data).toEqual(expected);
    expect(backend.bytes.subarray(0, 200)).toEqual(expected);
    client.write(request(NBD_CMD.WRITE_ZEROES, 4n, 0, 50));
    expect(await client.readReply()).toMatchObject({ error: 0, handle: 4n });
    expect(writes.at(-1)).toEqual({ offset: 0, data: new Uint8Array(50) });
    client.write(request(NBD_CMD.FLUSH, 5n, 0, 0));
    expect(await client.readReply()).toMatchObject({ error: 0, handle: 5n });
    expect(server.stats).toMatchObject({ writes: 3, writtenBytes: 4096 + 100 + 50, reads: 1, readBytes: 200, flushes: 1 });
    client.write(request(NBD_CMD.DISC, 6n, 0, 0));
    expect(await client.closesWithin(2000)).toBe(true);
    expect(client.pendingBytes).toBe(0); // DISC has no reply
  });

  it('bad requests get error replies, the connection stays usable, a bad magic closes it, others are still served', async () => {
    const { connect, errors, server, writes } = await setup({ requestBytesMax: 65536 });
    const bad = await connect();
    const other = await connect();
    await bad.handshake();
    await other.handshake();
    bad.write(request(NBD_CMD.READ, 1n, SIZE - 1, 2)); // out of range
    expect(await bad.readReply()).toEqual({ error: NBD_ERROR.EINVAL, handle: 1n, data: new Uint8Array(0) });
    bad.write(request(NBD_CMD.READ, 2n, 0, 65537)); // oversized
    expect(await bad.readReply()).toMatchObject({ error: NBD_ERROR.EINVAL, handle: 2n });
    bad.write(request(77, 3n, 0, 0)); // unknown command
    expect(await bad.readReply()).toMatchObject({ error: NBD_ERROR.EINVAL, handle: 3n });
    await bad.writeChunked(request(NBD_CMD.WRITE, 4n, 0, 200_000, { data: new Uint8Array(200_000).fill(7) }), 30_000); // oversized write
    expect(await bad.readReply()).toMatchObject({ error: NBD_ERROR.EINVAL, handle: 4n });
    bad.write(request(NBD_CMD.READ, 5n, 0, 16)); // still in sync
    expect(await bad.readReply(16)).toMatchObject({ error: 0, handle: 5n, data: new Uint8Array(16) });
    expect(writes).toEqual([]);
    bad.write(request(NBD_CMD.READ, 6n, 0, 16, { magic: 0x12345678 }));
    expect(await bad.closesWithin(2000)).toBe(true);
    expect(errors.map((e) => [e.code, e.details.reason])).toEqual([['KEMARI_NBD_PROTOCOL', 'request-magic']]);
    other.write(request(NBD_CMD.WRITE, 7n, 0, 4, { data: Uint8Array.of(1, 2, 3, 4) }));
    expect(await other.readReply()).toMatchObject({ error: 0, handle: 7n });
    expect(server.stats.protocolErrors).toBe(1);
    expect(await waitFor(() => server.clientCount === 1, 2000)).toBe(true);
  });

  it('unknown options are NBD_REP_ERR_UNSUP; a truncated handshake is reported and the server keeps serving', async () => {
    const { connect, errors } = await setup();
    const client = await connect();
    await client.read(18);
    client.write(concat(clientFlags(NBD_CLIENT_FLAG.FIXED_NEWSTYLE), option(NBD_OPT.STRUCTURED_REPLY), option(1234, Uint8Array.of(1))));
    expect((await client.readOptionReplies()).map((r) => r.type)).toEqual([NBD_REP.ERR_UNSUP]);
    expect((await client.readOptionReplies()).map((r) => [r.option, r.type])).toEqual([[1234, NBD_REP.ERR_UNSUP]]);
    client.write(option(NBD_OPT.GO, infoData('')).subarray(0, 10));
    client.end();
    expect(await client.closesWithin(2000)).toBe(true);
    expect(await waitFor(() => errors.length === 1, 2000)).toBe(true);
    expect(errors[0]).toMatchObject({ code: 'KEMARI_NBD_PROTOCOL', details: { reason: 'truncated' } });
    const next = await connect();
    await next.handshake();
  });

  it('a client that connects and leaves, or sends garbage, never takes the server down', async () => {
    const { connect, server } = await setup();
    const silent = await connect();
    silent.destroy();
    const garbage = await connect();
    garbage.write(new Uint8Array(64).fill(0xff));
    expect(await garbage.closesWithin(2000)).toBe(true);
    const good = await connect();
    await good.handshake();
    good.write(request(NBD_CMD.READ, 1n, 0, 8));
    expect(await good.readReply(8)).toMatchObject({ error: 0, handle: 1n });
    expect(server.stats.protocolErrors).toBe(1);
  });

  it('a pipelined burst split into tiny chunks is answered in order', async () => {
    const { connect } = await setup();
    const client = await connect();
    await client.handshake();
    const parts: Uint8Array[] = [];
    for (let i = 0; i < 100; i += 1) {
      parts.push(request(NBD_CMD.WRITE, BigInt(2 * i), i * 512, 512, { data: pattern(512, i) }));
      parts.push(request(NBD_CMD.READ, BigInt(2 * i + 1), i * 512, 512));
    }
    await client.writeChunked(concat(...parts), 97);
    for (let i = 0; i < 100; i += 1) {
      expect(await client.readReply()).toMatchObject({ error: 0, handle: BigInt(2 * i) });
      const read = await client.readReply(512);
      expect(read.handle).toBe(BigInt(2 * i + 1));
      expect(read.data).toEqual(pattern(512, i));
    }
  });

  it('stops reading from a client that does not read its replies (backpressure), then catches up', async () => {
    const { connect, server } = await setup();
    const client = await connect();
    await client.handshake();
    const count = 200;
    const length = 512 * 1024; // 100 MiB of replies in all
    client.pause();
    client.write(concat(...Array.from({ length: count }, (_, i) => request(NBD_CMD.READ, BigInt(i), 0, length))));
    await new Promise((r) => setTimeout(r, 300));
    // Only a few replies fit in the socket buffers before the server waits for 'drain'.
    expect(server.stats.reads).toBeLessThan(5);
    client.resume();
    for (let i = 0; i < count; i += 1) expect((await client.readReply(length)).handle).toBe(BigInt(i));
    expect(server.stats.reads).toBe(count);
  });

  it('stops reading from a client whose writes the backend cannot keep up with', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const inner = new MemoryNbdBackend(SIZE);
    const backend: NbdBackend = {
      sizeBytes: SIZE,
      read: (offset, length) => inner.read(offset, length),
      write: async (offset, data) => {
        await gate;
        inner.write(offset, data);
      },
      flush: () => {},
    };
    const { connect, server } = await setup({ backend, requestBytesMax: 64 * 1024 });
    const client = await connect();
    await client.handshake();
    const count = 1000; // 64 MiB of writes
    const data = new Uint8Array(64 * 1024).fill(5);
    for (let i = 0; i < count; i += 1) client.write(request(NBD_CMD.WRITE, BigInt(i), 0, data.length, { data }));
    await new Promise((r) => setTimeout(r, 300));
    // The server holds about two requests' worth; the rest waits in the client (and a few kernel buffers).
    expect(client.unsentBytes).toBeGreaterThan(count * data.length - 8 * 1024 * 1024);
    expect(server.stats.writes).toBe(0);
    release();
    for (let i = 0; i < count; i += 1) expect(await client.readReply()).toMatchObject({ error: 0, handle: BigInt(i) });
    expect(server.stats.writes).toBe(count);
  });

  it('a WRITE_ZEROES longer than requestBytesMax is applied in bounded zero chunks, each observed', async () => {
    const backend = new MemoryNbdBackend(new Uint8Array(SIZE).fill(9));
    const { connect, writes } = await setup({ requestBytesMax: 65536, backend });
    const client = await connect();
    await client.handshake();
    client.write(request(NBD_CMD.WRITE_ZEROES, 1n, 1000, 200_000, { flags: NBD_CMD_FLAG.FUA }));
    expect(await client.readReply()).toMatchObject({ error: 0, handle: 1n });
    expect(writes.map((w) => [w.offset, w.data.length])).toEqual([
      [1000, 65536],
      [1000 + 65536, 65536],
      [1000 + 2 * 65536, 65536],
      [1000 + 3 * 65536, 200_000 - 3 * 65536],
    ]);
    expect(writes.every((w) => w.data.every((b) => b === 0))).toBe(true);
    expect(backend.bytes.subarray(1000, 201_000).every((b) => b === 0)).toBe(true);
    expect(backend.bytes[999]).toBe(9);
    expect(backend.bytes[201_000]).toBe(9);
  });

  it('a refusing observer: KEMARI_DISK_LOG_FULL is NBD_ENOSPC, other errors NBD_EIO; the disk is untouched', async () => {
    let refusal: Error | undefined = new KemariError('KEMARI_DISK_LOG_FULL', 'full');
    const { connect, backend } = await setup({
      onWrite: () => {
        if (refusal !== undefined) throw refusal;
      },
    });
    const client = await connect();
    await client.handshake();
    client.write(request(NBD_CMD.WRITE, 1n, 0, 4, { data: Uint8Array.of(1, 1, 1, 1) }));
    expect(await client.readReply()).toMatchObject({ error: NBD_ERROR.ENOSPC, handle: 1n });
    refusal = new Error('boom');
    client.write(request(NBD_CMD.WRITE_ZEROES, 2n, 0, 4));
    expect(await client.readReply()).toMatchObject({ error: NBD_ERROR.EIO, handle: 2n });
    expect(backend.bytes.subarray(0, 4)).toEqual(new Uint8Array(4));
    refusal = undefined;
    client.write(request(NBD_CMD.WRITE, 3n, 0, 4, { data: Uint8Array.of(1, 1, 1, 1) }));
    expect(await client.readReply()).toMatchObject({ error: 0, handle: 3n });
    expect(backend.bytes.subarray(0, 4)).toEqual(Uint8Array.of(1, 1, 1, 1));
  });

  it('a failing backend is NBD_EIO and the connection goes on', async () => {
    let fail = true;
    const inner = new MemoryNbdBackend(SIZE);
    const backend: NbdBackend = {
      sizeBytes: SIZE,
      read: async (offset, length) => (fail ? Promise.reject(new Error('disk gone')) : inner.read(offset, length)),
      write: (offset, data) => {
        if (fail) throw new Error('disk gone');
        inner.write(offset, data);
      },
      flush: () => {
        if (fail) throw new Error('disk gone');
      },
    };
    const { connect } = await setup({ backend });
    const client = await connect();
    await client.handshake();
    client.write(concat(request(NBD_CMD.READ, 1n, 0, 8), request(NBD_CMD.WRITE, 2n, 0, 1, { data: Uint8Array.of(1) }), request(NBD_CMD.FLUSH, 3n, 0, 0)));
    expect((await client.readReply()).error).toBe(NBD_ERROR.EIO);
    expect((await client.readReply()).error).toBe(NBD_ERROR.EIO);
    expect((await client.readReply()).error).toBe(NBD_ERROR.EIO);
    fail = false;
    client.write(request(NBD_CMD.READ, 4n, 0, 8));
    expect(await client.readReply(8)).toMatchObject({ error: 0, handle: 4n });
  });

  it('a read-only export refuses writes with NBD_EPERM', async () => {
    const { connect, writes } = await setup({ readOnly: true });
    const client = await connect();
    await client.handshake();
    client.write(concat(request(NBD_CMD.WRITE, 1n, 0, 3, { data: Uint8Array.of(1, 2, 3) }), request(NBD_CMD.READ, 2n, 0, 3)));
    expect(await client.readReply()).toMatchObject({ error: NBD_ERROR.EPERM, handle: 1n });
    expect(await client.readReply(3)).toMatchObject({ error: 0, handle: 2n, data: new Uint8Array(3) });
    expect(writes).toEqual([]);
  });
});

describe('limits and lifecycle', () => {
  it('serves at most clientsMax clients; the next one is closed at once, and admitted once a slot frees', async () => {
    const { connect, server } = await setup({ clientsMax: 2 });
    const a = await connect();
    const b = await connect();
    await a.handshake();
    await b.handshake();
    const c = await connect();
    expect(await c.closesWithin(2000)).toBe(true);
    expect(c.pendingBytes).toBe(0); // not even a greeting
    expect(server.stats.clientsRefused).toBe(1);
    a.destroy();
    expect(await waitFor(() => server.clientCount === 1, 2000)).toBe(true);
    const d = await connect();
    await d.handshake();
  });

  it('close() disconnects clients, removes the socket file and is idempotent', async () => {
    const { connect, server, path } = await setup();
    const client = await connect();
    await client.handshake();
    expect(existsSync(path)).toBe(true);
    await Promise.all([server.close(), server.close()]);
    expect(await client.closesWithin(2000)).toBe(true);
    expect(existsSync(path)).toBe(false);
    expect(server.uri).toBe(`nbd+unix:///?socket=${path}`);
  });

  it('close() waits for a backend operation in flight', async () => {
    let release!: () => void;
    let finished = false;
    const inner = new MemoryNbdBackend(SIZE);
    const backend: NbdBackend = {
      sizeBytes: SIZE,
      read: (offset, length) => inner.read(offset, length),
      write: async (offset, data) => {
        await new Promise<void>((r) => (release = r));
        inner.write(offset, data);
        finished = true;
      },
      flush: () => {},
    };
    const { connect, server } = await setup({ backend });
    const client = await connect();
    await client.handshake();
    client.write(request(NBD_CMD.WRITE, 1n, 0, 1, { data: Uint8Array.of(9) }));
    expect(await waitFor(() => release !== undefined, 2000)).toBe(true);
    const closing = server.close();
    await new Promise((r) => setTimeout(r, 50));
    expect(finished).toBe(false);
    release();
    await closing;
    expect(finished).toBe(true);
  });

  it('refuses bad options with KEMARI_INVALID_ARGUMENT and a taken address with KEMARI_LISTEN_FAILED', async () => {
    const { dir, remove } = tempDir();
    cleanups.push(remove);
    const backend = new MemoryNbdBackend(4096);
    await expect(NbdServer.listen({ backend, path: 'relative.sock' })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(NbdServer.listen({ backend, path: join(dir, 'a.sock'), port: 0 })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(NbdServer.listen({ backend })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(NbdServer.listen({ backend, port: 0, requestBytesMax: 10 })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(NbdServer.listen({ backend, port: 0, clientsMax: 0 })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(NbdServer.listen({ backend: { sizeBytes: -1 } as unknown as NbdBackend, port: 0 })).rejects.toMatchObject({
      code: 'KEMARI_INVALID_ARGUMENT',
    });
    const notSocket = join(dir, 'file');
    writeFileSync(notSocket, 'x');
    await expect(NbdServer.listen({ backend, path: notSocket })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    const first = await NbdServer.listen({ backend, path: join(dir, 'live.sock') });
    cleanups.push(() => first.close());
    await expect(NbdServer.listen({ backend, path: join(dir, 'live.sock') })).rejects.toMatchObject({ code: 'KEMARI_LISTEN_FAILED' });
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => taken.close(r)));
    const port = (taken.address() as AddressInfo).port;
    await expect(NbdServer.listen({ backend, port })).rejects.toMatchObject({ code: 'KEMARI_LISTEN_FAILED' });
  });

  it('listens on TCP too', async () => {
    const backend = new MemoryNbdBackend(4096);
    const server = await NbdServer.listen({ backend, port: 0, exportName: 'disk 1' });
    cleanups.push(() => server.close());
    expect(server.port).toBeGreaterThan(0);
    expect(server.uri).toBe(`nbd://127.0.0.1:${server.port}/disk%201`);
    const client = await RawNbdClient.connect({ host: '127.0.0.1', port: server.port });
    cleanups.push(() => client.destroy());
    await client.handshake('disk 1');
    client.write(request(NBD_CMD.WRITE, 1n, 4090, 6, { data: Uint8Array.of(1, 2, 3, 4, 5, 6) }));
    expect(await client.readReply()).toMatchObject({ error: 0, handle: 1n });
    expect([...backend.bytes.subarray(4090)]).toEqual([1, 2, 3, 4, 5, 6]);
  });
});
