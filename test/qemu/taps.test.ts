/**
 * The I/O taps against real QEMU 7.2 (TCG): the nasm guest's `tick N` lines through the serial tap, and e1000
 * frames (QMP `announce-self`) through the net tap, both held by a real EventTap until a test-controlled
 * seal + release. Then, with raw unix clients standing in for QEMU: replay on a new primary (once, in order,
 * before new output) and a wrong frame length (the tap closes with KEMARI_PROTOCOL, nothing crashes).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { PassThrough } from 'node:stream';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SERIAL_LINES_ADDRESS, buildGuest, guestQemuArgs } from '../../examples/guest/build-guest.js';
import { KemariError } from '../../src/errors.js';
import { NetTap } from '../../src/qemu/taps/net-tap.js';
import { PendingReplay } from '../../src/qemu/taps/replay.js';
import { SerialTap } from '../../src/qemu/taps/serial-tap.js';
import type { SerialTapOptions } from '../../src/qemu/taps/serial-tap.js';
import { StreamFrameSplitter, encodeStreamFrameHeader } from '../../src/qemu/taps/stream-frame-splitter.js';
import { EventTap } from '../../src/tap/event-tap.js';
import type { ReleasedOutput } from '../../src/tap/event-tap.js';
import type { QemuProcess } from '../../src/qemu/qemu-process.js';
import { HAS_QEMU, NO_QEMU_MESSAGE, QemuFleet, readGuestWords, tempDir } from '../helpers/qemu.js';

const HAS_NASM = spawnSync('nasm', ['-v'], { stdio: 'ignore' }).status === 0;
const NO_NASM_MESSAGE = 'nasm not found: serial tap tests with the test guest skipped (apt-get install nasm)';
if (!HAS_QEMU) console.warn(`test/qemu/taps.test.ts: ${NO_QEMU_MESSAGE}`);
else if (!HAS_NASM) console.warn(`test/qemu/taps.test.ts: ${NO_NASM_MESSAGE}`);

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const latin1 = (data: Uint8Array): string => Buffer.from(data).toString('latin1');
const MAC = '52:54:00:12:34:56';
const MAC_BYTES = Buffer.from(MAC.replaceAll(':', ''), 'hex');

async function until(what: string, probe: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await probe())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

let dir: { path: string; remove: () => void };
let fleet: QemuFleet;
const cleanups: Array<() => unknown> = [];
beforeEach(() => {
  dir = tempDir();
  fleet = new QemuFleet(() => dir.path);
});
afterEach(async () => {
  await fleet.killAll();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  dir.remove();
});

/** Everything the event-tap released on `channel`, in release order. */
function releasedOn(tap: EventTap, channel: string): ReleasedOutput[] {
  const released: ReleasedOutput[] = [];
  tap.on('release', (output: ReleasedOutput) => {
    if (output.channel === channel) released.push(output);
  });
  return released;
}

/** Seals and releases one epoch per `intervalMs` until stopped: the acks of a secondary that keeps up. */
function ackEvery(tap: EventTap, intervalMs: number, firstTxn: number): { stop: () => number } {
  let txn = firstTxn - 1;
  const timer = setInterval(() => {
    tap.seal(++txn);
    tap.release(txn);
  }, intervalMs);
  return {
    stop: () => {
      clearInterval(timer);
      return txn;
    },
  };
}

/** Complete lines (a line still being written is left out). */
function completeLines(text: string): string[] {
  return text.split('\n').slice(0, -1);
}

/** The tick numbers of `tick N` lines, checked to be exactly `every`, `2 * every`, ... without a gap. */
function expectTicksWithoutGaps(lines: string[], every: number): number[] {
  expect(lines[0]).toMatch(/^kemari-guest /);
  const ticks = lines.slice(1).map((line) => {
    const match = /^tick (\d+)$/.exec(line);
    expect(match, `line ${JSON.stringify(line)}`).not.toBeNull();
    return Number(match?.[1]);
  });
  ticks.forEach((tick, i) => expect(tick).toBe((i + 1) * every));
  return ticks;
}

/** A unix socket client that collects be32-framed frames (the outside peer, or a fake QEMU). */
async function framedClient(path: string): Promise<{ socket: net.Socket; frames: Uint8Array[]; closed: Promise<void> }> {
  const socket = net.createConnection({ path });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.on('error', () => {});
  const frames: Uint8Array[] = [];
  const splitter = new StreamFrameSplitter();
  socket.on('data', (chunk: Buffer) => frames.push(...splitter.push(chunk)));
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  cleanups.push(() => socket.destroy());
  return { socket, frames, closed };
}

function framed(frame: Uint8Array): Buffer {
  return Buffer.concat([encodeStreamFrameHeader(frame.byteLength), frame]);
}

/** Stops the guest, keeps acking until everything it wrote went through the tap, then stops acking. */
async function stopAndDrain(tap: EventTap, serial: SerialTap, qemu: QemuProcess, ack: { stop: () => number }): Promise<void> {
  await qemu.qmp.execute('stop');
  let bytesIn = -1;
  await until('drained', async () => {
    const s = serial.stats();
    const idle = s.bytesIn === bytesIn && tap.heldCount === 0 && s.outputsInFlight === 0 && s.waitingBytes === 0 && !s.paused;
    bytesIn = s.bytesIn;
    if (!idle) await sleep(50);
    return idle;
  });
  ack.stop();
}

describe.skipIf(!HAS_QEMU || !HAS_NASM)('SerialTap with the test guest', () => {
  /**
   * Builds and boots the guest with COM1 on a serial tap whose outside is a string; `onDeliver` sees the outside
   * text after each delivery.
   */
  async function bootWithSerial(
    tap: EventTap,
    guest: { tickHz: number; serialEveryTicks: number },
    extra: Partial<SerialTapOptions> = {},
    onDeliver: (outside: string) => void = () => {},
  ) {
    const { imagePath } = await buildGuest({ ...guest, dirtyPagesPerTick: 0, diskEveryTicks: 0 }, dir.path);
    let outside = '';
    const serial = await SerialTap.listen({
      path: join(dir.path, 'serial.sock'),
      sink: (channel, data) => tap.output(channel, data),
      output: (data) => {
        outside += latin1(data);
        onDeliver(outside);
      },
      ...extra,
    });
    cleanups.push(() => serial.close());
    const qemu = await fleet.start([...guestQemuArgs(imagePath), ...serial.qemuArgs()]);
    return { serial, qemu, outside: () => outside };
  }

  it('no tick line reaches the outside before its epoch is released; then all arrive complete and in order', async () => {
    const tap = new EventTap();
    const released = releasedOn(tap, 'serial0');
    const releasedText = (): string => released.map((r) => latin1(r.payload)).join('');
    let tappedText = '';
    tap.on('output', (event: { channel: string; payload: Uint8Array }) => (tappedText += latin1(event.payload)));
    // Checked at every delivery: the outside never holds a byte that was not released before it.
    let deliveries = 0;
    let violations = 0;
    const { serial, qemu, outside } = await bootWithSerial(tap, { tickHz: 500, serialEveryTicks: 5 }, {}, (text) => {
      deliveries++;
      if (!releasedText().startsWith(text)) violations++;
    });

    // Epoch 1: lines are produced and tapped, but neither time nor sealing lets them out.
    await until('two tick lines tapped', () => tappedText.includes('tick 10\n'));
    await sleep(200);
    expect(outside()).toBe('');
    const epoch1 = tap.seal(1);
    const epoch1Text = epoch1.map((e) => latin1(e.payload)).join('');
    expect(epoch1Text).toMatch(/^kemari-guest .*\ntick 5\ntick 10\n/);
    await sleep(100);
    expect(outside()).toBe('');

    tap.release(1);
    await until('epoch 1 delivered', () => outside().length >= epoch1Text.length);
    // Exactly epoch 1: nothing of the running epoch came along.
    expect(outside()).toBe(epoch1Text);

    // Then a secondary that acks every 20 ms; every delivery must be a prefix of what was released.
    let checked = 0;
    const ack = ackEvery(tap, 20, 2);
    await until('a second of output', async () => {
      const text = outside();
      expect(releasedText().startsWith(text)).toBe(true);
      checked++;
      return completeLines(text).length > 100;
    });
    await stopAndDrain(tap, serial, qemu, ack);
    expect(outside()).toBe(releasedText());
    expect(checked).toBeGreaterThan(5);
    expect(deliveries).toBeGreaterThan(10);
    expect(violations).toBe(0);
    const ticks = expectTicksWithoutGaps(completeLines(outside()), 5);
    expect(ticks.length).toBeGreaterThanOrEqual(100);
    expect(serial.stats().outputsReleased).toBe(released.length);
    expect(serial.stats().lastError).toBeUndefined();
  });

  it('a full event-tap applies backpressure to QEMU: it keeps running, and after the acks every line is there', async () => {
    const tap = new EventTap({ heldEventsMax: 4 });
    const released = releasedOn(tap, 'serial0');
    const { serial, qemu, outside } = await bootWithSerial(tap, { tickHz: 2000, serialEveryTicks: 1 }, { retryDelayMs: 5 });

    // No acks: the tap fills up with 4 outputs, refuses the 5th, and the serial tap stops reading.
    await until('the tap is full and reading paused', () => tap.heldCount === 4 && serial.stats().paused && serial.stats().refusals > 0);
    const bytesAtPause = serial.stats().bytesIn;
    // The guest itself comes to wait (once the socket buffers between QEMU and us are full): its count of printed
    // lines stands still while we do not read.
    let lines = await readGuestWords(qemu.qmp, SERIAL_LINES_ADDRESS, 1);
    await until('the guest waits for its UART', async () => {
      await sleep(100);
      const now = await readGuestWords(qemu.qmp, SERIAL_LINES_ADDRESS, 1);
      const still = now[0] === lines[0];
      lines = now;
      return still;
    });
    await sleep(500);
    expect(await readGuestWords(qemu.qmp, SERIAL_LINES_ADDRESS, 1)).toEqual(lines);
    // One pause: retries after KEMARI_TAP_FULL do not resume reading until one is accepted.
    expect(serial.stats().pauses).toBe(1);
    expect(serial.stats().refusals).toBeGreaterThan(10);
    // QEMU is alive and answering while its UART waits for us.
    expect((await qemu.qmp.execute<{ running: boolean }>('query-status')).running).toBe(true);
    expect(tap.heldCount).toBe(4);
    expect(outside()).toBe('');
    // Bounded: while paused, at most one more socket read (64 KiB) came in; the rest waits in QEMU's UART.
    expect(serial.stats().bytesIn - bytesAtPause).toBeLessThanOrEqual(64 * 1024);
    expect(serial.stats().waitingBytes).toBeLessThanOrEqual(2 * 64 * 1024);

    // Acks resume the flow.
    const ack = ackEvery(tap, 10, 1);
    await until('more than 2000 lines out', () => completeLines(outside()).length > 2000, 30_000);
    // Stop the guest, then drain: everything QEMU wrote reaches the outside, in order, without a gap.
    await stopAndDrain(tap, serial, qemu, ack);
    expect(outside()).toBe(released.map((r) => latin1(r.payload)).join(''));
    const ticks = expectTicksWithoutGaps(completeLines(outside()), 1);
    expect(ticks.length).toBeGreaterThanOrEqual(2000);
    expect(serial.stats().bytesIn).toBe(outside().length);
    expect(serial.stats().lastError).toBeUndefined();
  });
});

describe.skipIf(!HAS_QEMU)('NetTap with an e1000 and -netdev stream', () => {
  it('announce-self frames are outputs on net0, held until released, then reach the outside peer intact; injected frames reach QEMU', async () => {
    const tap = new EventTap();
    const released = releasedOn(tap, 'net0');
    const tapped: Uint8Array[] = [];
    tap.on('output', (event: { channel: string; payload: Uint8Array }) => tapped.push(event.payload));
    const nettap = await NetTap.listen({
      path: join(dir.path, 'net.sock'),
      outsidePath: join(dir.path, 'outside.sock'),
      sink: (channel, data) => tap.output(channel, data),
    });
    cleanups.push(() => nettap.close());
    const peer = await framedClient(join(dir.path, 'outside.sock'));
    const qemu = await fleet.start(nettap.qemuArgs({ mac: MAC }));
    await until('QEMU connected', () => nettap.connected);

    // QEMU connects its stream netdev asynchronously and drops what the NIC sends before that completes: announce
    // until one frame came through, so that the counts below are exact.
    await until('the netdev is connected on the QEMU side', async () => {
      await qemu.qmp.execute('announce-self', { initial: 1, max: 1, rounds: 1, step: 1 });
      await sleep(100);
      return tap.heldCount > 0;
    });
    await sleep(100);
    const warm = tap.heldCount;

    await qemu.qmp.execute('announce-self', { initial: 20, max: 100, rounds: 3, step: 20 });
    await until('three more frames tapped', () => tap.heldCount === warm + 3);
    await sleep(150);
    expect(tap.heldCount).toBe(warm + 3);
    expect(peer.frames).toEqual([]);
    tap.seal(1);
    await sleep(50);
    expect(peer.frames).toEqual([]);
    tap.release(1);
    await until('the frames at the peer', () => peer.frames.length === warm + 3);
    expect(released.map((r) => r.txn)).toEqual(Array.from({ length: warm + 3 }, () => 1));
    for (const [i, frame] of peer.frames.entries()) {
      const f = Buffer.from(frame);
      expect(f).toEqual(Buffer.from(tapped[i] as Uint8Array));
      expect(f.byteLength).toBe(60);
      expect(f.subarray(0, 6).toString('hex')).toBe('ffffffffffff');
      expect(f.subarray(6, 12)).toEqual(MAC_BYTES);
      expect(f.readUInt16BE(12)).toBe(0x8035);
      // RARP: Ethernet / IPv4, lengths 6 and 4, opcode 3 (reverse request), sender and target = the NIC's MAC.
      expect([f.readUInt16BE(14), f.readUInt16BE(16), f[18], f[19], f.readUInt16BE(20)]).toEqual([1, 0x0800, 6, 4, 3]);
      expect(f.subarray(22, 28)).toEqual(MAC_BYTES);
      expect(f.subarray(32, 38)).toEqual(MAC_BYTES);
    }

    // A frame from the outside goes straight to QEMU (no driver in the guest: it queues it), and the stream stays in
    // sync: QEMU keeps running and its next announcement arrives through the tap as before.
    const toGuest = Buffer.alloc(60);
    MAC_BYTES.copy(toGuest, 0);
    Buffer.from('020000000001', 'hex').copy(toGuest, 6);
    toGuest.writeUInt16BE(0x88b5, 12);
    toGuest.write('hello guest', 14, 'latin1');
    peer.socket.write(framed(toGuest));
    await until('frame written to QEMU', () => nettap.stats().framesToGuest === 1);
    expect(nettap.inject(toGuest)).toBe(true);
    await qemu.qmp.execute('announce-self', { initial: 20, max: 100, rounds: 1, step: 20 });
    await until('a fourth frame tapped', () => tap.heldCount === 1);
    tap.seal(2);
    tap.release(2);
    await until('one more frame at the peer', () => peer.frames.length === warm + 4);
    expect((await qemu.qmp.execute<{ running: boolean }>('query-status')).running).toBe(true);
    const stats = nettap.stats();
    expect(stats).toMatchObject({ connected: true, peerConnected: true, framesFromGuest: warm + 4, framesToGuest: 2, framesToGuestDropped: 0 });
    expect(stats.lastError).toBeUndefined();
  });
});

describe('taps with a stand-in for QEMU', () => {
  it('replay: a new primary delivers the pending outputs once, in order, before new ones', async () => {
    const tap = new EventTap();
    const frameA = Buffer.alloc(60, 0xaa);
    const frameNew = Buffer.alloc(60, 0xbb);
    const replay = new PendingReplay([
      { txn: 7, id: 1, channel: 'serial0', payload: Buffer.from('pending 1\n') },
      { txn: 7, id: 2, channel: 'net0', payload: frameA },
      { txn: 8, id: 3, channel: 'serial0', payload: Buffer.from('pending 2\n') },
      { txn: 7, id: 1, channel: 'serial0', payload: Buffer.from('pending 1\n') },
    ]);

    // Serial: the pending lines go out at once, before QEMU even connects; new output waits for its ack.
    let outside = '';
    const serial = await SerialTap.listen({
      path: join(dir.path, 'serial.sock'),
      sink: (channel, data) => tap.output(channel, data),
      output: (data) => (outside += latin1(data)),
      replay,
    });
    cleanups.push(() => serial.close());
    expect(outside).toBe('pending 1\npending 2\n');
    const fakeQemu = net.createConnection({ path: serial.path });
    cleanups.push(() => fakeQemu.destroy());
    fakeQemu.write('new line\n');
    await until('new output tapped', () => tap.heldCount === 1);
    expect(outside).toBe('pending 1\npending 2\n');
    tap.seal(9);
    tap.release(9);
    await until('new output delivered', () => outside.length > 20);
    expect(outside).toBe('pending 1\npending 2\nnew line\n');
    expect(serial.stats().replayed).toBe(2);

    // Taken once: a second tap on the same channel replays nothing.
    let second = '';
    const again = await SerialTap.listen({ path: join(dir.path, 'serial2.sock'), sink: (c, d) => tap.output(c, d), output: (d) => (second += latin1(d)), replay });
    cleanups.push(() => again.close());
    expect(second).toBe('');
    expect(replay.remaining).toBe(1);

    // Net: the new frame is released before the outside peer connects; the pending frame still goes first.
    const nettap = await NetTap.listen({
      path: join(dir.path, 'net.sock'),
      outsidePath: join(dir.path, 'outside.sock'),
      sink: (channel, data) => tap.output(channel, data),
      replay,
    });
    cleanups.push(() => nettap.close());
    expect(replay.remaining).toBe(0);
    const qemuSide = await framedClient(nettap.path);
    qemuSide.socket.write(framed(frameNew));
    await until('frame tapped', () => tap.heldCount === 1);
    tap.seal(10);
    tap.release(10);
    await until('released', () => nettap.stats().outputsReleased === 1);
    const peer = await framedClient(join(dir.path, 'outside.sock'));
    await until('two frames at the peer', () => peer.frames.length === 2);
    expect(peer.frames.map((f) => Buffer.from(f))).toEqual([frameA, frameNew]);
    await sleep(50);
    expect(peer.frames).toHaveLength(2);
    expect(nettap.stats().replayed).toBe(1);
  });

  it('a wrong frame length from the QEMU side closes the net tap with KEMARI_PROTOCOL, no crash', async () => {
    const tap = new EventTap();
    const frames: Uint8Array[] = [];
    const nettap = await NetTap.listen({ path: join(dir.path, 'net.sock'), sink: (c, d) => tap.output(c, d), onFrame: (f) => frames.push(f) });
    cleanups.push(() => nettap.close());
    const errors: KemariError[] = [];
    nettap.on('error', (error) => errors.push(error));
    const fakeQemu = await framedClient(nettap.path);
    // One good frame, then a length far above frameBytesMax (no body follows: nothing may be buffered for it).
    fakeQemu.socket.write(framed(Buffer.alloc(60, 1)));
    await until('the good frame tapped', () => tap.heldCount === 1);
    const bad = Buffer.alloc(4);
    bad.writeUInt32BE(0x7fff_ffff);
    fakeQemu.socket.write(bad);
    const closedWith = await nettap.closed;
    expect(closedWith).toBeInstanceOf(KemariError);
    expect(closedWith?.code).toBe('KEMARI_PROTOCOL');
    expect(closedWith?.details['length']).toBe(0x7fff_ffff);
    expect(errors.map((e) => e.code)).toEqual(['KEMARI_PROTOCOL']);
    expect(nettap.stats().lastError?.code).toBe('KEMARI_PROTOCOL');
    await fakeQemu.closed;
    expect(existsSync(nettap.path)).toBe(false);
    // The good frame before it stays in the event-tap; released, it goes nowhere: the tap is closed.
    tap.seal(1);
    tap.release(1);
    await sleep(20);
    expect(frames).toEqual([]);
    // A closed tap takes no new QEMU.
    await expect(framedClient(nettap.path)).rejects.toThrow();
  });

  it('a wrong frame length from the outside peer cuts off only that peer', async () => {
    const tap = new EventTap();
    const nettap = await NetTap.listen({ path: join(dir.path, 'net.sock'), outsidePath: join(dir.path, 'outside.sock'), sink: (c, d) => tap.output(c, d) });
    cleanups.push(() => nettap.close());
    const errors: KemariError[] = [];
    nettap.on('error', (error) => errors.push(error));
    const fakeQemu = await framedClient(nettap.path);
    const peer = await framedClient(join(dir.path, 'outside.sock'));
    peer.socket.write(Buffer.from([0, 0, 0, 0]));
    await peer.closed;
    expect(errors.map((e) => e.code)).toEqual(['KEMARI_PROTOCOL']);
    // The tap still works: a new peer gets the guest's frames once released.
    const peer2 = await framedClient(join(dir.path, 'outside.sock'));
    fakeQemu.socket.write(framed(Buffer.alloc(60, 2)));
    await until('tapped', () => tap.heldCount === 1);
    tap.seal(1);
    tap.release(1);
    await until('delivered', () => peer2.frames.length === 1);
    expect(Buffer.from(peer2.frames[0] as Uint8Array)).toEqual(Buffer.alloc(60, 2));
  });

  it('serial input goes straight through to QEMU; a slow Writable outside gets every byte in order', async () => {
    const tap = new EventTap();
    const input = new PassThrough();
    const outside = new PassThrough({ highWaterMark: 16 });
    const serial = await SerialTap.listen({ path: join(dir.path, 'serial.sock'), sink: (c, d) => tap.output(c, d), output: outside, input, outputBytesMax: 8 });
    cleanups.push(() => serial.close());
    // Input written before QEMU connects waits in the Readable (paused), then goes through, unheld.
    input.write('typed before\n');
    const fakeQemu = net.createConnection({ path: serial.path });
    cleanups.push(() => fakeQemu.destroy());
    let toGuest = '';
    fakeQemu.on('data', (chunk: Buffer) => (toGuest += chunk.toString('latin1')));
    await until('input at QEMU', () => toGuest === 'typed before\n');
    input.write('typed after\n');
    await until('more input at QEMU', () => toGuest === 'typed before\ntyped after\n');
    expect(tap.heldCount).toBe(0);

    // Output: 400 bytes in outputs of at most 8 bytes, through an outside that takes 16 bytes before 'drain'.
    const sent = Array.from({ length: 40 }, (_, i) => `line ${String(i).padStart(3, '0')}\n`).join('');
    fakeQemu.write(sent);
    const ack = ackEvery(tap, 5, 1);
    let received = '';
    await until('nothing yet to read', () => outside.readableLength > 0);
    outside.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
    await until('all output outside', () => received.length === sent.length);
    ack.stop();
    expect(received).toBe(sent);
    expect(serial.stats().outputsReleased).toBeGreaterThanOrEqual(sent.length / 8);
  });

  it('refuses a relative path and a second QEMU connection', async () => {
    const tap = new EventTap();
    await expect(SerialTap.listen({ path: 'serial.sock', sink: (c, d) => tap.output(c, d), output: () => {} })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(NetTap.listen({ path: join(dir.path, 'n.sock'), sink: (c, d) => tap.output(c, d) })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    const serial = await SerialTap.listen({ path: join(dir.path, 'serial.sock'), sink: (c, d) => tap.output(c, d), output: () => {} });
    cleanups.push(() => serial.close());
    const first = await framedClient(serial.path);
    await until('connected', () => serial.connected);
    const second = await framedClient(serial.path);
    await second.closed;
    expect(serial.stats()).toMatchObject({ connected: true, connections: 1, connectionsRefused: 1 });
    first.socket.destroy();
    await until('disconnected', () => !serial.connected);
  });
});
