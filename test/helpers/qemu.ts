/**
 * Test helpers for real QEMU: detection (for describe.skipIf), a fleet that kills every process a test started (by
 * PID, in afterEach), the small diskless guest every QEMU test uses, and stream capture/load over unix sockets.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startQemu } from '../../src/qemu/qemu-process.js';
import type { QemuProcess, QemuStartOptions } from '../../src/qemu/qemu-process.js';
import type { QmpClient } from '../../src/qemu/qmp-client.js';

/** The binary the QEMU tests drive. */
export const QEMU_BINARY = 'qemu-system-x86_64';

/** True when qemu-system-x86_64 runs here; QEMU suites skip (with a message) otherwise. */
export const HAS_QEMU = spawnSync(QEMU_BINARY, ['--version'], { stdio: 'ignore' }).status === 0;

/** Why QEMU suites are skipped; CI installs QEMU and treats skips as failures. */
export const NO_QEMU_MESSAGE = `${QEMU_BINARY} not found: QEMU tests skipped (apt-get install qemu-system-x86)`;

/** A diskless pc guest: SeaBIOS finds nothing to boot and idles. Small, fast, and migratable. */
export const GUEST_ARGS: readonly string[] = ['-machine', 'pc,accel=tcg', '-m', '32', '-nodefaults', '-display', 'none'];

/** A short temporary directory (unix socket paths must stay under 108 bytes). */
export function tempDir(): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), 'kq-'));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Starts QEMU processes and kills all of them, by PID, in afterEach. */
export class QemuFleet {
  private readonly processes: QemuProcess[] = [];
  private counter = 0;

  constructor(private readonly dir: () => string) {}

  /** Starts the standard guest plus `extraArgs`; its QMP socket lives in the test's temp dir. */
  async start(extraArgs: readonly string[] = [], options: Partial<QemuStartOptions> = {}): Promise<QemuProcess> {
    const qmpSocketPath = join(this.dir(), `qmp-${this.counter++}.sock`);
    const qemu = await startQemu({ args: [...GUEST_ARGS, ...extraArgs], qmpSocketPath, startTimeoutMs: 20_000, ...options });
    this.processes.push(qemu);
    return qemu;
  }

  /** Kills (SIGKILL by PID) and reaps every process started, whatever state it is in. */
  async killAll(): Promise<void> {
    const all = this.processes.splice(0);
    await Promise.all(
      all.map(async (qemu) => {
        try {
          process.kill(qemu.pid, 'SIGCONT');
        } catch {
          // gone already
        }
        await qemu.kill('SIGKILL');
      }),
    );
  }
}

/** Turns on MIGRATION events (QEMU sends them only with the `events` capability). */
export async function enableMigrationEvents(qmp: QmpClient, extra: { capability: string; state: boolean }[] = []): Promise<void> {
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }, ...extra] });
}

/**
 * Captures one checkpoint stream: stop, raise the bandwidth cap, migrate to a unix socket we listen on, wait for
 * MIGRATION completed and for the sender to close. The VM is left in `postmigrate` (stopped).
 */
export async function captureStream(qmp: QmpClient, dir: string, name = 'mig'): Promise<Buffer> {
  const path = join(dir, `${name}.sock`);
  rmSync(path, { force: true });
  const chunks: Buffer[] = [];
  let resolveEnded!: () => void;
  const ended = new Promise<void>((resolve) => (resolveEnded = resolve));
  const server = net.createServer((socket) => {
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('close', () => resolveEnded());
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  try {
    await enableMigrationEvents(qmp);
    const stopped = qmp.waitForEvent('STOP');
    const status = (await qmp.execute<{ running: boolean }>('query-status')).running;
    if (status) {
      await qmp.execute('stop');
      await stopped;
    } else {
      stopped.catch(() => {});
    }
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 107374182400 });
    const completed = qmp.waitForEvent('MIGRATION', (event) => event.data['status'] === 'completed' || event.data['status'] === 'failed', 20_000);
    await qmp.execute('migrate', { uri: `unix:${path}` });
    const event = await completed;
    if (event.data['status'] !== 'completed') throw new Error(`migration ${String(event.data['status'])}`);
    await ended;
    return Buffer.concat(chunks);
  } finally {
    server.close();
  }
}

/**
 * Loads a stream into a QEMU started with `-incoming defer`: migrate-incoming on a unix socket, write the chunks,
 * wait for MIGRATION completed (rejects with the QEMU status if it failed).
 */
export async function loadStream(qmp: QmpClient, dir: string, chunks: Iterable<Uint8Array>, name = 'in'): Promise<void> {
  const path = join(dir, `${name}.sock`);
  rmSync(path, { force: true });
  await enableMigrationEvents(qmp);
  const finished = qmp.waitForEvent('MIGRATION', (event) => event.data['status'] === 'completed' || event.data['status'] === 'failed', 20_000);
  await qmp.execute('migrate-incoming', { uri: `unix:${path}` });
  const socket = net.createConnection({ path });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  // QEMU closes the connection (and exits) when a load fails: stop writing then instead of awaiting 'drain'.
  let closed = false;
  const closedPromise = new Promise<void>((resolve) => socket.once('close', () => ((closed = true), resolve())));
  socket.on('error', () => {});
  for (const chunk of chunks) {
    if (closed) break;
    if (!socket.write(chunk)) await Promise.race([new Promise((resolve) => socket.once('drain', resolve)), closedPromise]);
  }
  socket.end();
  try {
    const event = await finished;
    if (event.data['status'] !== 'completed') throw new Error(`incoming migration ${String(event.data['status'])}`);
  } finally {
    socket.destroy();
  }
}

/** Reads `count` 32-bit words of guest-physical memory at `address` through HMP `xp`. */
export async function readGuestWords(qmp: QmpClient, address: number, count = 4): Promise<number[]> {
  const text = await qmp.execute<string>('human-monitor-command', { 'command-line': `xp /${count}wx 0x${address.toString(16)}` });
  const words = [...text.matchAll(/0x([0-9a-f]{8})\b/g)].map((match) => Number.parseInt(match[1] as string, 16));
  return words.slice(0, count);
}
