/**
 * The NBD server against real clients: libnbd's nbdinfo and nbdcopy, QEMU's own NBD client in qemu-img and qemu-io.
 * Skipped (with the list of missing tools) where they are not installed: apt-get install libnbd-bin qemu-utils.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { KemariError } from '../../src/errors.js';
import { FileNbdBackend } from '../../src/qemu/nbd/file-nbd-backend.js';
import type { NbdBackend } from '../../src/qemu/nbd/nbd-backend.js';
import { MemoryNbdBackend } from '../../src/qemu/nbd/memory-nbd-backend.js';
import { NbdServer } from '../../src/qemu/nbd/nbd-server.js';
import type { NbdServerOptions } from '../../src/qemu/nbd/nbd-server.js';
import { killChildren, missingTools, run, tempDir } from '../helpers/nbd-tools.js';

const LIBNBD = missingTools({ nbdinfo: ['--version'], nbdcopy: ['--version'] });
const QEMU_UTILS = missingTools({ 'qemu-img': ['--version'], 'qemu-io': ['--version'] });
if (LIBNBD.length > 0) console.warn(`skipping the libnbd interop tests: ${LIBNBD.join(', ')} not installed (apt-get install libnbd-bin)`);
if (QEMU_UTILS.length > 0) console.warn(`skipping the QEMU NBD client tests: ${QEMU_UTILS.join(', ')} not installed (apt-get install qemu-utils)`);

/** The reason a block is skipped, in its title, so the test report says what to install. */
function skipNote(missing: string[], pkg: string): string {
  return missing.length === 0 ? '' : ` [skipped: ${missing.join(', ')} missing, apt-get install ${pkg}]`;
}

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  await killChildren();
  for (const f of cleanups.splice(0).reverse()) await f();
});

interface Served {
  server: NbdServer;
  dir: string;
  writes: Array<{ offset: number; data: Uint8Array }>;
  errors: KemariError[];
}

async function serve(backend: NbdBackend, options: Partial<NbdServerOptions> = {}): Promise<Served> {
  const { dir, remove } = tempDir();
  cleanups.push(remove);
  const writes: Served['writes'] = [];
  const errors: KemariError[] = [];
  const server = await NbdServer.listen({
    backend,
    path: join(dir, 'nbd.sock'),
    onWrite: (offset, data) => {
      writes.push({ offset, data });
    },
    onClientError: (error) => errors.push(error),
    ...options,
  });
  cleanups.push(() => server.close());
  return { server, dir, writes, errors };
}

/** Runs a tool and fails with its output when it exits non-zero. */
async function ok(command: string, args: string[]): Promise<string> {
  const result = await run(command, args, 30_000);
  if (result.code !== 0) throw new Error(`${command} ${args.join(' ')} exited ${result.code ?? result.signal}:\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

/** An image with random data, a long zero run in the middle and data again at the end. */
function sampleImage(sizeBytes: number): Uint8Array {
  const image = new Uint8Array(randomBytes(sizeBytes));
  image.fill(0, sizeBytes / 4, sizeBytes / 2);
  return image;
}

describe.skipIf(LIBNBD.length > 0)(`libnbd clients (nbdinfo, nbdcopy)${skipNote(LIBNBD, 'libnbd-bin')}`, () => {
  it('nbdinfo reads the export size, flags and block sizes', async () => {
    const { server } = await serve(new MemoryNbdBackend(3 * 1024 * 1024), { exportName: 'disk0', requestBytesMax: 8 * 1024 * 1024 });
    const info = JSON.parse(await ok('nbdinfo', ['--json', server.uri])) as {
      protocol: string;
      structured: boolean;
      exports: Array<Record<string, unknown>>;
    };
    expect(info.protocol).toBe('newstyle-fixed');
    expect(info.structured).toBe(false);
    expect(info.exports).toHaveLength(1);
    expect(info.exports[0]).toMatchObject({
      'export-name': 'disk0',
      'export-size': 3 * 1024 * 1024,
      is_read_only: false,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_fast_zero: false,
      can_multi_conn: true,
      can_df: false,
      block_size_minimum: 1,
      block_size_preferred: 4096,
      block_size_maximum: 8 * 1024 * 1024,
    });
    const list = await ok('nbdinfo', ['--list', '--json', server.uri]);
    expect((JSON.parse(list) as { exports: Array<{ 'export-name': string }> }).exports.map((e) => e['export-name'])).toEqual(['disk0']);
    expect(await ok('nbdinfo', ['--size', server.uri])).toBe(`${3 * 1024 * 1024}\n`);
  });

  it('nbdinfo on a read-only export sees is_read_only; an unknown export name fails cleanly', async () => {
    const { server, errors } = await serve(new MemoryNbdBackend(4096), { readOnly: true });
    const info = JSON.parse(await ok('nbdinfo', ['--json', server.uri])) as { exports: Array<Record<string, unknown>> };
    expect(info.exports[0]).toMatchObject({ is_read_only: true, can_fua: false, can_trim: false, can_zero: false });
    const wrong = await run('nbdinfo', [server.uri.replace(':///', ':///nope')]);
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toMatch(/export|not available|unknown/i);
    expect(errors).toEqual([]);
    expect(await ok('nbdinfo', ['--size', server.uri])).toBe('4096\n');
  });

  it('nbdcopy copies an image in and out through a memory disk, byte for byte', async () => {
    const size = 8 * 1024 * 1024;
    const image = sampleImage(size);
    const backend = new MemoryNbdBackend(size);
    const { server, dir, writes, errors } = await serve(backend);
    const source = join(dir, 'in.raw');
    const target = join(dir, 'out.raw');
    writeFileSync(source, image);
    await ok('nbdcopy', [source, server.uri]);
    expect(Buffer.compare(backend.bytes, image)).toBe(0);
    // Every byte that changed went through the observer; replaying the observed writes rebuilds the disk.
    const replay = new Uint8Array(size);
    for (const w of writes) replay.set(w.data, w.offset);
    expect(Buffer.compare(replay, image)).toBe(0);
    await ok('nbdcopy', [server.uri, target]);
    expect(Buffer.compare(readFileSync(target), image)).toBe(0);
    expect(errors).toEqual([]);
  });

  it('nbdcopy round-trips through a file disk, also with several connections at once', async () => {
    const size = 4 * 1024 * 1024;
    const image = sampleImage(size);
    const { dir: diskDir, remove } = tempDir();
    cleanups.push(remove);
    const diskPath = join(diskDir, 'disk.img');
    writeFileSync(diskPath, new Uint8Array(size));
    const backend = await FileNbdBackend.open(diskPath);
    cleanups.push(() => backend.close());
    const { server, dir } = await serve(backend);
    const source = join(dir, 'in.raw');
    writeFileSync(source, image);
    await ok('nbdcopy', ['--connections=4', '--requests=16', source, server.uri]);
    await server.close();
    expect(Buffer.compare(readFileSync(diskPath), image)).toBe(0);
    expect(server.stats.clientsAccepted).toBeGreaterThan(1);
  });
});

describe.skipIf(QEMU_UTILS.length > 0)(`QEMU's NBD client (qemu-io, qemu-img)${skipNote(QEMU_UTILS, 'qemu-utils')}`, () => {
  it('qemu-io writes arrive at the observer exactly, in order, and read back', async () => {
    const backend = new MemoryNbdBackend(1024 * 1024);
    const { server, writes, errors } = await serve(backend);
    await ok('qemu-io', [
      '-f', 'raw', server.uri,
      '-c', 'write -P 0xab 0 64k',
      '-c', 'write -P 0xcd 65536 4k',
      '-c', 'write -P 0x11 -f 131072 512',
      '-c', 'flush',
      '-c', 'read -P 0xab 0 64k',
      '-c', 'read -P 0xcd 65536 4k',
    ]);
    expect(writes.map((w) => [w.offset, w.data.length, w.data[0]])).toEqual([
      [0, 65536, 0xab],
      [65536, 4096, 0xcd],
      [131072, 512, 0x11],
    ]);
    expect(writes[0]!.data.every((b) => b === 0xab)).toBe(true);
    expect(writes[1]!.data.every((b) => b === 0xcd)).toBe(true);
    expect(backend.bytes.subarray(0, 65536).every((b) => b === 0xab)).toBe(true);
    expect(server.stats.flushes).toBeGreaterThanOrEqual(1);
    expect(errors).toEqual([]);
  });

  it('qemu-io zero writes reach the observer as zeroes; discards change nothing', async () => {
    const backend = new MemoryNbdBackend(new Uint8Array(1024 * 1024).fill(0x77));
    const { server, writes } = await serve(backend);
    await ok('qemu-io', ['-f', 'raw', server.uri, '-c', 'write -z 4096 8192', '-c', 'discard 0 4096', '-c', 'read -P 0x77 0 4096', '-c', 'read -P 0 4096 8192']);
    expect(writes.map((w) => [w.offset, w.data.length])).toEqual([[4096, 8192]]);
    expect(writes[0]!.data.every((b) => b === 0)).toBe(true);
    expect(backend.bytes.subarray(0, 4096).every((b) => b === 0x77)).toBe(true);
  });

  it('qemu-io on a read-only export cannot write', async () => {
    const { server, writes } = await serve(new MemoryNbdBackend(65536), { readOnly: true });
    const result = await run('qemu-io', ['-f', 'raw', server.uri, '-c', 'write -P 0xab 0 4k']);
    expect(`${result.stdout}${result.stderr}`).toMatch(/read.only|permission|not permitted/i);
    expect(writes).toEqual([]);
  });

  it('qemu-img sees the size, converts an image onto the export and compares equal', async () => {
    const size = 2 * 1024 * 1024;
    const image = sampleImage(size);
    const backend = new MemoryNbdBackend(size);
    const { server, dir } = await serve(backend);
    const info = JSON.parse(await ok('qemu-img', ['info', '--output=json', server.uri])) as { 'virtual-size': number; format: string };
    expect(info).toMatchObject({ 'virtual-size': size, format: 'raw' });
    const source = join(dir, 'src.raw');
    writeFileSync(source, image);
    await ok('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, server.uri]);
    expect(Buffer.compare(backend.bytes, image)).toBe(0);
    expect(await ok('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, server.uri])).toMatch(/identical/i);
  });

  it('qemu-img reaches a TCP export', async () => {
    const backend = new MemoryNbdBackend(1024 * 1024);
    const server = await NbdServer.listen({ backend, port: 0, exportName: 'tcp-disk' });
    cleanups.push(() => server.close());
    const info = JSON.parse(await ok('qemu-img', ['info', '--output=json', server.uri])) as { 'virtual-size': number };
    expect(info['virtual-size']).toBe(1024 * 1024);
  });
});
