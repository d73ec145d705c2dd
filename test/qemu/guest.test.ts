/**
 * The nasm test guest (examples/guest): built with a few parameter sets, booted in real QEMU (TCG), stopped through
 * QMP, and checked for consistency between its serial lines, its memory (status page, dirty ring) and its disk.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  COUNTER_ADDRESS,
  DEFAULT_GUEST_PARAMS,
  PAGE_SIZE_BYTES,
  PARAMS_OFFSET,
  PARAMS_SIZE_BYTES,
  RING_ADDRESS,
  SECTOR_MAGIC,
  SECTOR_SIZE_BYTES,
  STATUS_ADDRESS,
  STATUS_SIZE_BYTES,
  buildGuest,
  decodeGuestParams,
  decodeGuestSector,
  decodeGuestStatus,
  guestQemuArgs,
  readGuestSectors,
} from '../../examples/guest/build-guest.js';
import type { GuestParams, GuestSector, GuestStatus } from '../../examples/guest/build-guest.js';
import { isKemariError } from '../../src/errors.js';

const QEMU = 'qemu-system-x86_64';
const NASM = 'nasm';

function onPath(command: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => {
    try {
      accessSync(join(dir, command), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

const haveNasm = onPath(NASM);
const haveQemu = onPath(QEMU);
if (!haveNasm) console.warn(`test/qemu/guest.test.ts: skipped, '${NASM}' is not on PATH (apt-get install nasm)`);
else if (!haveQemu) console.warn(`test/qemu/guest.test.ts: QEMU runs skipped, '${QEMU}' is not on PATH (apt-get install qemu-system-x86)`);

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kemari-guest-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function until<T>(what: string, timeoutMs: number, probe: () => T | undefined | Promise<T | undefined>): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Serial output as text: from a unix socket QEMU connects to, or from a file QEMU writes. */
interface SerialTap {
  text(): Promise<string>;
  /** The `-serial`/`-chardev` arguments for QEMU. */
  args: string[];
}

async function socketSerial(dir: string): Promise<SerialTap> {
  const path = join(dir, 'serial.sock');
  let text = '';
  const server: Server = createServer((socket: Socket) => {
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (text += chunk));
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, resolve);
  });
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  return {
    text: async () => text,
    args: ['-chardev', `socket,id=s0,path=${path},server=off`, '-serial', 'chardev:s0'],
  };
}

function fileSerial(dir: string): SerialTap {
  const path = join(dir, 'serial.txt');
  return {
    text: () => readFile(path, 'latin1').catch(() => ''),
    args: ['-serial', `file:${path}`],
  };
}

/** Complete `tick N` lines (a line still being written is not counted), and the banner. */
function parseSerial(text: string): { banner: string | undefined; ticks: bigint[] } {
  const lines = text.split('\n').slice(0, -1);
  const ticks: bigint[] = [];
  for (const line of lines) {
    const m = /^tick (\d+)$/.exec(line);
    if (m?.[1] !== undefined) ticks.push(BigInt(m[1]));
  }
  return { banner: lines.find((l) => l.startsWith('kemari-guest ')), ticks };
}

type QmpReply = { return?: unknown; error?: { class: string; desc: string } };

/** Just enough QMP: newline-delimited JSON over a unix socket, one command at a time, events ignored. */
class Qmp {
  private buffer = '';
  private waiting: Array<(reply: QmpReply) => void> = [];
  private closed = false;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      for (let nl = this.buffer.indexOf('\n'); nl >= 0; nl = this.buffer.indexOf('\n')) {
        const line = this.buffer.slice(0, nl).trim();
        this.buffer = this.buffer.slice(nl + 1);
        if (line === '') continue;
        const message = JSON.parse(line) as QmpReply & { event?: string; QMP?: unknown };
        if (message.event !== undefined) continue;
        this.waiting.shift()?.(message);
      }
    });
    socket.on('close', () => (this.closed = true));
    socket.on('error', () => {});
  }

  /** Connects (retrying while QEMU creates the socket), reads the greeting and negotiates capabilities. */
  static async connect(path: string, timeoutMs: number): Promise<Qmp> {
    const socket = await until(`QMP socket ${path}`, timeoutMs, () =>
      new Promise<Socket | undefined>((resolve) => {
        const s = createConnection(path);
        s.once('connect', () => resolve(s));
        s.once('error', () => resolve(undefined));
      }),
    );
    const qmp = new Qmp(socket);
    const greeting = await new Promise<QmpReply>((r) => qmp.waiting.push(r));
    expect(greeting).toHaveProperty('QMP');
    await qmp.execute('qmp_capabilities');
    return qmp;
  }

  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    if (this.closed) throw new Error(`QMP closed before ${command}`);
    const reply = new Promise<QmpReply>((r) => this.waiting.push(r));
    this.socket.write(`${JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args })}\n`);
    const { return: value, error } = await reply;
    if (error !== undefined) throw new Error(`QMP ${command}: ${error.class}: ${error.desc}`);
    return value;
  }

  /** HMP `xp /<words>wx <address>` as bytes (little-endian words). */
  async readPhysical(address: number, bytes: number): Promise<Buffer> {
    const words = Math.ceil(bytes / 4);
    const out = (await this.execute('human-monitor-command', { 'command-line': `xp /${words}wx 0x${address.toString(16)}` })) as string;
    const values = out
      .split('\n')
      .filter((line) => line.includes(':'))
      .flatMap((line) => line.slice(line.indexOf(':') + 1).trim().split(/\s+/))
      .filter((w) => w !== '');
    expect(values).toHaveLength(words);
    const buffer = Buffer.alloc(words * 4);
    values.forEach((w, i) => buffer.writeUInt32LE(Number.parseInt(w, 16), i * 4));
    return buffer.subarray(0, bytes);
  }

  close(): void {
    this.socket.destroy();
  }
}

interface RunningGuest {
  child: ChildProcess;
  qmp: Qmp;
  serial: SerialTap;
  startedAtMs: number;
  exited: Promise<void>;
}

async function bootGuest(dir: string, imagePath: string, serial: SerialTap): Promise<RunningGuest> {
  const qmpPath = join(dir, 'qmp.sock');
  const startedAtMs = performance.now();
  const child = spawn(QEMU, [...guestQemuArgs(imagePath), ...serial.args, '-qmp', `unix:${qmpPath},server=on,wait=off`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      process.kill(child.pid, 'SIGKILL');
      await exited;
    }
  });
  const early = exited.then(() => {
    throw new Error(`QEMU exited early (${child.exitCode ?? child.signalCode}): ${stderr.trim()}`);
  });
  early.catch(() => {});
  const qmp = await Promise.race([Qmp.connect(qmpPath, 10_000), early]);
  cleanups.push(() => qmp.close());
  return { child, qmp, serial, startedAtMs, exited };
}

async function killGuest(guest: RunningGuest): Promise<void> {
  if (guest.child.pid !== undefined && guest.child.exitCode === null && guest.child.signalCode === null) {
    process.kill(guest.child.pid, 'SIGKILL');
  }
  await guest.exited;
}

const mod = (a: bigint, n: bigint): bigint => ((a % n) + n) % n;

/**
 * Runs the guest until `lines` tick lines arrived, stops it through QMP and checks serial, memory and disk agree.
 * Returns what it saw for case-specific checks.
 */
async function runAndCheck(p: GuestParams, imagePath: string, guest: RunningGuest, lines: number) {
  const S = BigInt(p.serialEveryTicks);
  const firstTickMs = await until('the first tick line', 20_000, async () =>
    parseSerial(await guest.serial.text()).ticks.length > 0 ? performance.now() - guest.startedAtMs : undefined,
  );
  await until(`${lines} tick lines`, 20_000, async () => (parseSerial(await guest.serial.text()).ticks.length >= lines ? true : undefined));

  await guest.qmp.execute('stop');
  expect(await guest.qmp.execute('query-status')).toMatchObject({ running: false, status: 'paused' });
  const status: GuestStatus = decodeGuestStatus(await guest.qmp.readPhysical(STATUS_ADDRESS, STATUS_SIZE_BYTES));
  const counter = await guest.qmp.readPhysical(COUNTER_ADDRESS, 8);
  expect(counter.readBigUInt64LE(0)).toBe(status.ticks);
  // QEMU wrote the serial bytes before `stop` returned; let them reach our side, then they no longer change.
  let text = await guest.serial.text();
  await until('serial output to settle', 5_000, async () => {
    await sleep(100);
    const now = await guest.serial.text();
    const settled = now === text;
    text = now;
    return settled ? true : undefined;
  });
  const { banner, ticks } = parseSerial(text);

  expect(status.running).toBe(true);
  expect(status.fatalVector).toBeUndefined();
  expect(status.effectiveParams).toEqual(p);
  expect(banner).toBe(
    `kemari-guest 1 tickHz=${p.tickHz} dirtyPagesPerTick=${p.dirtyPagesPerTick} ringPages=${p.ringPages} ` +
      `serialEveryTicks=${p.serialEveryTicks} diskEveryTicks=${p.diskEveryTicks} diskLbaBase=${p.diskLbaBase} ` +
      `diskLbaCount=${p.diskLbaCount} flags=${p.cacheFlush ? 1 : 0} diskSectors=${status.diskSectors}`,
  );

  // Serial: exactly every S ticks, none lost; the counter is at or past the last line; the line count agrees.
  expect(ticks.length).toBeGreaterThanOrEqual(lines);
  expect(ticks).toEqual(ticks.map((_, i) => S * BigInt(i + 1)));
  const last = ticks.at(-1) ?? 0n;
  expect(status.ticks).toBeGreaterThanOrEqual(last);
  // A stop between a line's newline and the count's increment leaves the count one behind.
  expect([0n, 1n]).toContain(last / S - status.serialLines);
  expect([0n, 1n]).toContain(status.ticks / S - status.serialLines);

  // Dirty ring: the last tick wrote its counter v into the N pages before the cursor; the page before those has v - 1.
  const N = BigInt(p.dirtyPagesPerTick);
  const R = BigInt(p.ringPages);
  const pageValue = async (page: bigint): Promise<bigint> =>
    (await guest.qmp.readPhysical(RING_ADDRESS + Number(mod(page, R)) * PAGE_SIZE_BYTES, 8)).readBigUInt64LE(0);
  const cursor = BigInt(status.ringCursor);
  if (N > 0n) {
    const v = await pageValue(cursor - 1n);
    expect([status.ticks - 1n, status.ticks]).toContain(v); // a stop inside the handler: cursor not yet advanced
    expect(v).toBeGreaterThan(0n);
    expect(await pageValue(cursor - N)).toBe(v);
    if (N < R && v > 1n) expect(await pageValue(cursor - N - 1n)).toBe(v - 1n);
    expect(mod(cursor - v * N, R)).toBe(0n); // every tick advanced the cursor by N
  } else {
    expect(cursor).toBe(0n);
    expect(await pageValue(0n)).toBe(0n);
  }

  await killGuest(guest);

  // Disk: every write i landed at base + (i mod count) with counter (i + 1) * D; the indices are the last ones written.
  const slots = await readGuestSectors(imagePath, p);
  const written = slots.filter((s): s is GuestSector => s !== undefined);
  const W = status.diskWrites;
  if (p.diskEveryTicks === 0) {
    expect(W).toBe(0n);
    expect(written).toEqual([]);
  } else {
    const D = BigInt(p.diskEveryTicks);
    const count = BigInt(p.diskLbaCount);
    expect(status.diskErrors).toBe(0);
    expect(W).toBeGreaterThan(0n);
    expect([0n, 1n]).toContain(status.ticks / D - W);
    slots.forEach((sector, slot) => {
      if (sector === undefined) return;
      expect(sector.intact).toBe(true);
      expect(mod(sector.writeIndex, count)).toBe(BigInt(slot));
      expect(sector.lba).toBe(p.diskLbaBase + slot);
      expect(sector.counter).toBe((sector.writeIndex + 1n) * D);
    });
    // Contiguous indices ending at W - 1, or at W when the write in flight at `stop` completed before the count.
    const indices = written.map((s) => s.writeIndex).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const top = indices.at(-1) ?? -1n;
    expect([W - 1n, W]).toContain(top);
    expect(BigInt(indices.length)).toBe(top + 1n < count ? top + 1n : count);
    expect(indices).toEqual(indices.map((_, i) => top - BigInt(indices.length - 1 - i)));
  }
  return { status, ticks, written, firstTickMs };
}

describe.skipIf(!haveNasm)('test guest image (needs nasm)', () => {
  it('patches the parameter block at PARAMS_OFFSET and pads the image', async () => {
    const dir = await tempDir();
    const params = { tickHz: 250, dirtyPagesPerTick: 3, ringPages: 7, serialEveryTicks: 5, diskEveryTicks: 0, diskLbaBase: 100, diskLbaCount: 9, cacheFlush: true };
    const { imagePath, layout, params: applied } = await buildGuest(params, dir, { imageSizeBytes: 1 << 20 });
    expect(applied).toEqual(params);
    expect((await stat(imagePath)).size).toBe(1 << 20);
    const image = await readFile(imagePath);
    expect(image.readUInt16LE(510)).toBe(0xaa55);
    expect(decodeGuestParams(image.subarray(PARAMS_OFFSET, PARAMS_OFFSET + PARAMS_SIZE_BYTES))).toEqual(params);
    expect(layout).toMatchObject({ PARAMS_OFFSET: 0x200, COUNTER_ADDRESS: 0x200000, RING_ADDRESS: 0x300000, SECTOR_MAGIC });
    expect(layout.stageSectors).toBeGreaterThan(0);
    expect(layout.stageEndLba).toBe(1 + layout.stageSectors);
    // The stage is zero-padded to whole sectors, then nothing: the sector ring starts blank.
    expect(image.subarray(layout.stageEndLba * SECTOR_SIZE_BYTES).every((b) => b === 0)).toBe(true);

    // Same source, other parameters: only the parameter block differs (the nasm output is reused from the cache).
    const other = await buildGuest({}, dir, { imageName: 'defaults.img' });
    const defaults = await readFile(other.imagePath);
    expect(defaults.length).toBe(4 << 20);
    expect(decodeGuestParams(defaults.subarray(PARAMS_OFFSET))).toEqual(DEFAULT_GUEST_PARAMS);
    expect(Buffer.compare(defaults.subarray(0, PARAMS_OFFSET), image.subarray(0, PARAMS_OFFSET))).toBe(0);
    const codeAt = PARAMS_OFFSET + PARAMS_SIZE_BYTES;
    const stageEnd = layout.stageEndLba * SECTOR_SIZE_BYTES;
    expect(Buffer.compare(defaults.subarray(codeAt, stageEnd), image.subarray(codeAt, stageEnd))).toBe(0);
  });

  it('refuses parameters the guest would have to clamp', async () => {
    const dir = await tempDir();
    const cases: Array<Partial<GuestParams>> = [
      { tickHz: 5 },
      { tickHz: 20_000 },
      { tickHz: 99.5 },
      { ringPages: 0 },
      { ringPages: 5000 },
      { ringPages: 8, dirtyPagesPerTick: 9 },
      { diskLbaBase: 1 },
      { diskLbaBase: 8000, diskLbaCount: 500 },
      { diskLbaCount: 0 },
      { serialEveryTicks: -1 },
    ];
    for (const params of cases) {
      const error = await buildGuest(params, dir).then(() => undefined, (e: unknown) => e);
      expect(isKemariError(error, 'KEMARI_INVALID_ARGUMENT'), JSON.stringify(params)).toBe(true);
    }
    // With disk writes off, the sector ring is not checked.
    await expect(buildGuest({ diskEveryTicks: 0, diskLbaBase: 1 }, dir)).resolves.toBeDefined();
  });

  it('decodes written sectors and tells blank and torn ones apart', () => {
    const sector = Buffer.alloc(SECTOR_SIZE_BYTES);
    expect(decodeGuestSector(sector)).toBeUndefined();
    sector.writeUInt32LE(SECTOR_MAGIC, 0);
    sector.writeUInt32LE(1, 4);
    sector.writeBigUInt64LE(1234n, 8);
    sector.writeBigUInt64LE(7n, 16);
    sector.writeUInt32LE(2055, 24);
    sector.writeBigUInt64LE(1234n, 496);
    sector.writeBigUInt64LE(7n, 504);
    expect(decodeGuestSector(sector)).toEqual({ counter: 1234n, writeIndex: 7n, lba: 2055, intact: true });
    sector.writeBigUInt64LE(6n, 504);
    expect(decodeGuestSector(sector)?.intact).toBe(false);
  });
});

describe.skipIf(!haveNasm || !haveQemu)('test guest under QEMU (needs qemu-system-x86_64 and nasm)', () => {
  it('default parameters: tick lines, counter, dirty ring and disk sectors agree (serial over a unix socket)', async () => {
    const dir = await tempDir();
    const { imagePath, params } = await buildGuest({}, dir);
    const guest = await bootGuest(dir, imagePath, await socketSerial(dir));
    const { status, ticks, written, firstTickMs } = await runAndCheck(params, imagePath, guest, 5);
    console.log(
      `guest (defaults): first tick line ${firstTickMs.toFixed(0)} ms after spawn; stopped at tick ${status.ticks}, ` +
        `${ticks.length} lines, ${status.diskWrites} sector writes (${written.length} on disk)`,
    );
    expect(status.diskSectors).toBe((4 << 20) / SECTOR_SIZE_BYTES);
  });

  it('1000 Hz, a wrapping page ring and sector ring, CACHE FLUSH (serial to a file)', async () => {
    const dir = await tempDir();
    const { imagePath, params } = await buildGuest(
      { tickHz: 1000, dirtyPagesPerTick: 64, ringPages: 96, serialEveryTicks: 50, diskEveryTicks: 7, diskLbaBase: 4000, diskLbaCount: 5, cacheFlush: true },
      dir,
    );
    const guest = await bootGuest(dir, imagePath, fileSerial(dir));
    const { status, written } = await runAndCheck(params, imagePath, guest, 6);
    expect(status.diskWrites).toBeGreaterThan(5n); // the sector ring wrapped
    expect(written).toHaveLength(5);
  });

  it('disk writes off, no dirtying, a line per tick; a hand-patched block is clamped by the guest', async () => {
    const dir = await tempDir();
    const params = { ...DEFAULT_GUEST_PARAMS, tickHz: 200, dirtyPagesPerTick: 0, serialEveryTicks: 1, diskEveryTicks: 0 };
    const { imagePath } = await buildGuest(params, dir);
    const guest = await bootGuest(dir, imagePath, await socketSerial(dir));
    await runAndCheck(params, imagePath, guest, 20);

    // Out-of-range values written past the builder: the guest bounds them and says so in its banner.
    const image = await readFile(imagePath);
    image.writeUInt32LE(0, PARAMS_OFFSET + 0x08); // tickHz 0: the default
    image.writeUInt32LE(200_000, PARAMS_OFFSET + 0x0c); // dirtyPagesPerTick: at most ringPages
    image.writeUInt32LE(100_000, PARAMS_OFFSET + 0x10); // ringPages: at most 4096
    image.writeUInt32LE(1, PARAMS_OFFSET + 0x1c); // diskLbaBase inside the stage: moved past it
    image.writeUInt32LE(1_000_000, PARAMS_OFFSET + 0x20); // diskLbaCount past the disk's end: cut to its size
    image.writeUInt32LE(3, PARAMS_OFFSET + 0x18); // diskEveryTicks
    await writeFile(imagePath, image);
    const dir2 = await tempDir();
    const clamped = await bootGuest(dir2, imagePath, await socketSerial(dir2));
    const text = await until('the banner', 20_000, async () => parseSerial(await clamped.serial.text()).banner);
    const stageEndLba = /diskLbaBase=(\d+)/.exec(text)?.[1];
    expect(Number(stageEndLba)).toBeGreaterThan(1);
    expect(text).toBe(
      `kemari-guest 1 tickHz=100 dirtyPagesPerTick=4096 ringPages=4096 serialEveryTicks=1 diskEveryTicks=3 ` +
        `diskLbaBase=${stageEndLba} diskLbaCount=${8192 - Number(stageEndLba)} flags=0 diskSectors=8192`,
    );
    await until('a tick line', 20_000, async () => (parseSerial(await clamped.serial.text()).ticks.length > 0 ? true : undefined));
    await killGuest(clamped);
  });
});
