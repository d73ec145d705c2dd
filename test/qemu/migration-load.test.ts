/**
 * Streams we write, loaded by a real QEMU: capture from a source, parse, re-emit with the writer, load into a second
 * QEMU started with `-S -incoming defer`, and check memory (pmemsave, HMP xp) and that the guest runs. Also with a
 * page edited, and with x-ignore-shared over a shared memory file.
 */
import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RamImage } from '../../src/qemu/migration/ram-image.js';
import type { MigrationRecord, RamSectionRecord } from '../../src/qemu/migration/records.js';
import { writeMigrationStream } from '../../src/qemu/migration/stream-writer.js';
import type { MigrationStreamSpec } from '../../src/qemu/migration/stream-writer.js';
import type { QmpClient } from '../../src/qemu/qmp-client.js';
import { HAS_QEMU, NO_QEMU_MESSAGE, QemuFleet, captureStream, enableMigrationEvents, loadStream, readGuestWords, tempDir } from '../helpers/qemu.js';
import { parseStream } from '../helpers/qemu-stream.js';

const GUEST_RAM_BYTES = 32 << 20;
const PATTERN_ADDRESS = 0x200000;
const PATTERN = [0xdeadbeef, 0x01234567, 0x89abcdef, 0x0badf00d];

function find<T extends MigrationRecord['type']>(records: readonly MigrationRecord[], type: T): Extract<MigrationRecord, { type: T }> {
  const record = records.find((candidate) => candidate.type === type);
  if (record === undefined) throw new Error(`no ${type} record`);
  return record as Extract<MigrationRecord, { type: T }>;
}

/** Everything needed to re-emit a parsed stream, with its RAM assembled into images. */
function reemitSpec(records: readonly MigrationRecord[]): {
  image: RamImage;
  sentBlocks: ReadonlySet<string>;
  spec: (pages: MigrationStreamSpec['pages']) => MigrationStreamSpec;
} {
  const blocks = find(records, 'ram-blocks').blocks;
  const image = new RamImage(blocks);
  for (const record of records) image.apply(record);
  // Under x-ignore-shared, shared blocks carry no pages and QEMU refuses pages for them: send only blocks that had some.
  const sentBlocks = new Set(records.flatMap((record) => (record.type === 'page' || record.type === 'fill-page' ? [record.block] : [])));
  const configuration = find(records, 'configuration');
  const start = records.find((record): record is RamSectionRecord => record.type === 'ram-section') as RamSectionRecord;
  return {
    image,
    sentBlocks,
    spec: (pages) => ({
      machineType: configuration.machineType,
      capabilities: configuration.capabilities,
      ramSection: start,
      blocks,
      pages,
      device: find(records, 'device').data,
      // VMDESC dropped on purpose: QEMU only warns, and kemari does not need to keep it.
    }),
  };
}

function littleEndianWords(words: readonly number[]): Uint8Array {
  const bytes = Buffer.alloc(words.length * 4);
  words.forEach((word, index) => bytes.writeUInt32LE(word, index * 4));
  return bytes;
}

async function runsAfterCont(qmp: QmpClient): Promise<void> {
  const resumed = qmp.waitForEvent('RESUME');
  await qmp.execute('cont');
  await resumed;
  await new Promise((resolve) => setTimeout(resolve, 200));
  expect(await qmp.execute('query-status')).toMatchObject({ running: true, status: 'running' });
}

describe.skipIf(!HAS_QEMU)(`migration streams loaded into QEMU${HAS_QEMU ? '' : ` (${NO_QEMU_MESSAGE})`}`, () => {
  let dir: ReturnType<typeof tempDir>;
  let fleet: QemuFleet;
  const shmFiles: string[] = [];
  beforeEach(() => {
    dir = tempDir();
    fleet = new QemuFleet(() => dir.path);
  });
  afterEach(async () => {
    await fleet.killAll();
    dir.remove();
    for (const file of shmFiles.splice(0)) rmSync(file, { force: true });
  });

  it('parse, write, load: the destination holds exactly the source memory and runs', async () => {
    const source = await fleet.start();
    await new Promise((resolve) => setTimeout(resolve, 300));
    const stream = await captureStream(source.qmp, dir.path);
    const sourceDump = join(dir.path, 'source.mem');
    await source.qmp.execute('pmemsave', { val: 0, size: GUEST_RAM_BYTES, filename: sourceDump });

    const records = parseStream(stream, 65536);
    const { image, spec } = reemitSpec(records);
    const destination = await fleet.start(['-S', '-incoming', 'defer']);
    await loadStream(destination.qmp, dir.path, writeMigrationStream(spec(image.pages())));
    expect(await destination.qmp.execute('query-status')).toMatchObject({ running: false, status: 'paused' });

    const destinationDump = join(dir.path, 'destination.mem');
    await destination.qmp.execute('pmemsave', { val: 0, size: GUEST_RAM_BYTES, filename: destinationDump });
    const sourceMemory = readFileSync(sourceDump);
    expect(sourceMemory.byteLength).toBe(GUEST_RAM_BYTES);
    expect(readFileSync(destinationDump).equals(sourceMemory)).toBe(true);
    // Above 1 MiB guest-physical memory is pc.ram one to one: the parsed image is what the guest sees.
    expect(Buffer.from(image.image('pc.ram').subarray(1 << 20)).equals(sourceMemory.subarray(1 << 20))).toBe(true);

    await runsAfterCont(destination.qmp);
    // The source is untouched by all this: it sits in postmigrate and resumes too.
    expect(await source.qmp.execute('query-status')).toMatchObject({ status: 'postmigrate' });
    await runsAfterCont(source.qmp);
  });

  it('a page edited in the re-emitted stream arrives in the guest', async () => {
    const source = await fleet.start();
    const stream = await captureStream(source.qmp, dir.path);
    const before = await readGuestWords(source.qmp, PATTERN_ADDRESS);
    expect(before).not.toEqual(PATTERN);

    const records = parseStream(stream, 4096);
    const { image, spec } = reemitSpec(records);
    image.image('pc.ram').set(littleEndianWords(PATTERN), PATTERN_ADDRESS);
    const edited = [...writeMigrationStream(spec(image.pages()))];
    // The parser sees the edit in the stream we send.
    const reparsed = parseStream(Buffer.concat(edited));
    const page = reparsed.find((record) => record.type === 'page' && record.block === 'pc.ram' && record.offset === PATTERN_ADDRESS);
    expect(page?.type === 'page' && Buffer.from(page.data.subarray(0, 16)).equals(littleEndianWords(PATTERN))).toBe(true);

    const destination = await fleet.start(['-S', '-incoming', 'defer']);
    await loadStream(destination.qmp, dir.path, edited);
    expect(await readGuestWords(destination.qmp, PATTERN_ADDRESS)).toEqual(PATTERN);
    await runsAfterCont(destination.qmp);
    expect(await readGuestWords(destination.qmp, PATTERN_ADDRESS)).toEqual(PATTERN);
    // A neighbouring page was loaded unchanged.
    expect(await readGuestWords(destination.qmp, PATTERN_ADDRESS + 4096)).toEqual(await readGuestWords(source.qmp, PATTERN_ADDRESS + 4096));
  });

  it('x-ignore-shared: the stream lists block addresses and no shared pages; a destination on the same memory file loads it', async () => {
    const memPath = `/dev/shm/kq-${process.pid}-${Date.now()}`;
    shmFiles.push(memPath);
    const memoryArgs = ['-object', `memory-backend-file,id=mem,size=32M,mem-path=${memPath},share=on`, '-machine', 'memory-backend=mem'];
    const source = await fleet.start(memoryArgs);
    await enableMigrationEvents(source.qmp, [{ capability: 'x-ignore-shared', state: true }]);
    const stream = await captureStream(source.qmp, dir.path);

    const records = parseStream(stream, 7);
    expect(find(records, 'configuration').capabilities).toEqual(['x-ignore-shared']);
    const blocks = find(records, 'ram-blocks').blocks;
    expect(blocks.every((block) => typeof block.memoryRegionAddr === 'number')).toBe(true);
    expect(blocks.find((block) => block.name === 'pc.bios')?.memoryRegionAddr).toBe(0x1_0000_0000 - 0x40000);
    expect(blocks.find((block) => block.name === 'mem')?.lengthBytes).toBe(GUEST_RAM_BYTES);
    const pageBlocks = new Set(records.flatMap((record) => (record.type === 'page' || record.type === 'fill-page' ? [record.block] : [])));
    expect(pageBlocks.has('mem')).toBe(false);
    expect(pageBlocks.has('pc.bios')).toBe(true);
    // Without the RAM, the stream is only ROMs, device state and VMDESC.
    expect(stream.byteLength).toBeLessThan(1 << 20);

    // Guest RAM is the shared file: edit it directly while the source is stopped.
    const fd = openSync(memPath, 'r+');
    try {
      writeSync(fd, littleEndianWords(PATTERN), 0, 16, PATTERN_ADDRESS);
    } finally {
      closeSync(fd);
    }
    const { image, sentBlocks, spec } = reemitSpec(records);
    const destination = await fleet.start(['-S', '-incoming', 'defer', ...memoryArgs]);
    await enableMigrationEvents(destination.qmp, [{ capability: 'x-ignore-shared', state: true }]);
    await loadStream(destination.qmp, dir.path, writeMigrationStream(spec(image.pages((block) => sentBlocks.has(block.name)))));
    expect(await readGuestWords(destination.qmp, PATTERN_ADDRESS)).toEqual(PATTERN);
    await runsAfterCont(destination.qmp);
  });

  it('a destination without x-ignore-shared refuses a stream that lists it, and exits', async () => {
    const destination = await fleet.start(['-S', '-incoming', 'defer']);
    const spec: MigrationStreamSpec = {
      machineType: 'pc-i440fx-7.2',
      capabilities: ['x-ignore-shared'],
      blocks: [{ name: 'pc.ram', lengthBytes: GUEST_RAM_BYTES, memoryRegionAddr: 0 }],
      pages: [],
      device: new Uint8Array(0),
    };
    await expect(loadStream(destination.qmp, dir.path, writeMigrationStream(spec))).rejects.toThrow(/failed/);
    // QEMU 7.2 exits after a failed incoming migration; QMP then fails with KEMARI_QEMU_EXITED.
    expect((await destination.exited).code).toBe(1);
    expect(destination.stderrTail()).toMatch(/capabilit/i);
    expect((await destination.qmp.closed).code).toBe('KEMARI_QEMU_EXITED');
  });
});
