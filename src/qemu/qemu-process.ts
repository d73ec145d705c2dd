/**
 * Starts and owns one qemu-system process with a QMP socket.
 *
 * Why a wrapper: a QEMU that dies must never leave callers hanging. The wrapper reaps the child (so `exited` always
 * settles), closes the QMP client with KEMARI_QEMU_EXITED when the process exits (so every pending command fails
 * with the exit code in its details), bounds the start with a timeout (killing what it started), and keeps the tail
 * of QEMU's stderr so start failures say why.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import { KemariError } from '../errors.js';
import { QmpClient } from './qmp-client.js';
import type { QmpConnectOptions } from './qmp-client.js';

/** How a QEMU process ended: exit code, or the signal that killed it. */
export interface QemuExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Options of {@link startQemu}. */
export interface QemuStartOptions {
  /** Absolute path of the QEMU binary, or a name looked up in PATH. Default `qemu-system-x86_64`. */
  binary?: string;
  /** QEMU arguments, without `-qmp` (added from `qmpSocketPath`). Paths in them must be absolute. */
  args: readonly string[];
  /** Absolute path of the QMP unix socket QEMU creates; an existing file there is removed first. */
  qmpSocketPath: string;
  /** Time allowed from spawn until QMP is negotiated; then the process is killed and start fails. Default 10000 ms. */
  startTimeoutMs?: number;
  /** Options of the QMP client (command timeout, line bound). */
  qmp?: Omit<QmpConnectOptions, 'connectTimeoutMs'>;
  /** Environment of the child; default the parent's. */
  env?: NodeJS.ProcessEnv;
  /** Bytes of stderr kept for error messages. Default 64 KiB. */
  stderrBytesMax?: number;
}

/** A running QEMU with a negotiated QMP session. */
export interface QemuProcess {
  /** Process id, for logs and for killing by PID. */
  readonly pid: number;
  /** The QMP session; it fails with KEMARI_QEMU_EXITED once the process exits. */
  readonly qmp: QmpClient;
  /** Settles (never rejects) once the child has exited and been reaped. */
  readonly exited: Promise<QemuExit>;
  /** The last bytes QEMU wrote to stderr (warnings, the reason of a failed start or load). */
  stderrTail(): string;
  /** Sends `signal` (default SIGKILL) if the process still runs, and resolves once it was reaped. */
  kill(signal?: NodeJS.Signals): Promise<QemuExit>;
}

/** Polling interval while waiting for QEMU to create and accept on its QMP socket. */
const CONNECT_RETRY_MS = 10;

/**
 * Spawns QEMU, waits until its QMP socket accepts and QMP is negotiated, and returns the running process. Rejects
 * with KEMARI_INVALID_ARGUMENT for a relative socket path, KEMARI_QEMU_EXITED if QEMU exits during start (stderr
 * tail in `details.stderr`) and KEMARI_TIMEOUT after `startTimeoutMs` (the process is killed first).
 */
export async function startQemu(options: QemuStartOptions): Promise<QemuProcess> {
  const { qmpSocketPath } = options;
  if (!isAbsolute(qmpSocketPath)) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', 'qmpSocketPath must be absolute (QEMU resolves paths against its own cwd)', { details: { qmpSocketPath } });
  }
  const startTimeoutMs = options.startTimeoutMs ?? 10_000;
  const stderrBytesMax = options.stderrBytesMax ?? 64 << 10;
  await rm(qmpSocketPath, { force: true });

  const args = [...options.args, '-qmp', `unix:${qmpSocketPath},server=on,wait=off`];
  const child = spawn(options.binary ?? 'qemu-system-x86_64', args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: options.env ?? process.env,
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (text: string) => {
    stderr = (stderr + text).slice(-stderrBytesMax);
  });

  let exit: QemuExit | undefined;
  const exited = new Promise<QemuExit>((resolve) => {
    // 'exit' can fire before or without 'close'; 'error' (spawn failure) may fire without 'exit'.
    child.once('exit', (code, signal) => {
      exit = { code, signal };
      resolve(exit);
    });
    child.once('error', (cause) => {
      exit ??= { code: null, signal: null };
      stderr += `\nspawn failed: ${cause.message}`;
      resolve(exit);
    });
  });
  void exited.then(() => rm(qmpSocketPath, { force: true }).catch(() => {}));

  const exitError = (what: string): KemariError =>
    new KemariError('KEMARI_QEMU_EXITED', `QEMU ${what} (code ${exit?.code ?? 'none'}, signal ${exit?.signal ?? 'none'})${stderr ? `: ${stderr.trim().slice(-2000)}` : ''}`, {
      details: { pid: child.pid, code: exit?.code ?? null, signal: exit?.signal ?? null, stderr: stderr.slice(-4000) },
    });

  const deadlineMs = Date.now() + startTimeoutMs;
  let qmp: QmpClient | undefined;
  try {
    qmp = await connectWhileAlive(child, qmpSocketPath, deadlineMs, () => exit !== undefined, options.qmp ?? {});
    if (qmp === undefined) throw exitError('exited during start');
  } catch (error) {
    const startError =
      error instanceof KemariError && error.code === 'KEMARI_QEMU_EXITED' && exit !== undefined
        ? exitError('exited during start')
        : error instanceof KemariError && error.code === 'KEMARI_TIMEOUT'
          ? new KemariError('KEMARI_TIMEOUT', `QEMU did not accept QMP within ${startTimeoutMs} ms`, { cause: error, details: { pid: child.pid, timeoutMs: startTimeoutMs, stderr: stderr.slice(-4000) } })
          : error;
    await killAndReap(child, exited, 'SIGKILL');
    throw startError;
  }

  const client = qmp;
  void exited.then(() => client.close(exitError('exited')));

  return {
    pid: child.pid as number,
    qmp: client,
    exited,
    stderrTail: () => stderr,
    kill: (signal: NodeJS.Signals = 'SIGKILL') => killAndReap(child, exited, signal),
  };
}

/**
 * Retries connecting until QMP is negotiated, QEMU exits (returns undefined) or the deadline passes (KEMARI_TIMEOUT).
 * QEMU creates the socket some time after exec, so ENOENT and ECONNREFUSED mean "not yet".
 */
async function connectWhileAlive(
  child: ChildProcess,
  path: string,
  deadlineMs: number,
  hasExited: () => boolean,
  qmpOptions: Omit<QmpConnectOptions, 'connectTimeoutMs'>,
): Promise<QmpClient | undefined> {
  for (;;) {
    if (hasExited()) return undefined;
    const remainingMs = deadlineMs - Date.now();
    if (remainingMs <= 0) throw new KemariError('KEMARI_TIMEOUT', 'QMP did not become ready', { details: { pid: child.pid, path } });
    try {
      return await QmpClient.connect(path, { ...qmpOptions, connectTimeoutMs: remainingMs });
    } catch (error) {
      if (!(error instanceof KemariError) || error.code !== 'KEMARI_CONNECT_FAILED') throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, CONNECT_RETRY_MS));
  }
}

async function killAndReap(child: ChildProcess, exited: Promise<QemuExit>, signal: NodeJS.Signals): Promise<QemuExit> {
  if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
    try {
      process.kill(child.pid, signal);
    } catch {
      // Already gone: 'exit' will (or did) fire.
    }
  }
  return exited;
}
