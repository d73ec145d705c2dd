/**
 * Running the real NBD peers (nbdinfo, nbdcopy, qemu-img, qemu-io, qemu-system-x86_64, nasm) from tests: whether a
 * tool is installed, running one with a deadline, and a temp directory per test. Every child is killed by its PID
 * and every directory removed by the cleanups the caller runs in afterEach.
 */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** True when `command` runs (`args` is a harmless probe such as --version). */
export function hasTool(command: string, args: string[] = ['--version']): boolean {
  try {
    return spawnSync(command, args, { stdio: 'ignore', timeout: 10_000 }).status === 0;
  } catch {
    return false;
  }
}

/** Names of the tools in `commands` that are missing, for a skip message. */
export function missingTools(commands: Record<string, string[]>): string[] {
  return Object.entries(commands)
    .filter(([command, args]) => !hasTool(command, args))
    .map(([command]) => command);
}

/** What a finished child reported. */
export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Children started by {@link run} / {@link start} and not yet reaped; {@link killChildren} kills them by PID. */
const children = new Set<ChildProcess>();

/** Runs a command to completion; kills it (SIGKILL, by PID) after `timeoutMs`. */
export function run(command: string, args: string[], timeoutMs = 30_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
    }, timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      children.delete(child);
      reject(error);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Starts a long-running command (QEMU); its output is collected in the returned object. */
export function start(command: string, args: string[]): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => {
    child.once('error', () => resolve(null));
    child.once('exit', (code) => {
      children.delete(child);
      resolve(code);
    });
  });
  return { child, output: () => output, exited };
}

/** Kills every child still running (SIGKILL by PID) and waits until each has exited. */
export async function killChildren(): Promise<void> {
  const waits: Array<Promise<unknown>> = [];
  for (const child of children) {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) {
      children.delete(child);
      continue;
    }
    waits.push(new Promise((resolve) => child.once('exit', resolve)));
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  await Promise.all(waits);
  children.clear();
}

/** A fresh temp directory (short path: Unix socket paths are limited to about 100 bytes) and its remover. */
export function tempDir(prefix = 'kemari-nbd-'): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Polls `check` every `intervalMs` until it returns true or `timeoutMs` passes; returns the last result. */
export async function waitFor(check: () => boolean, timeoutMs: number, intervalMs = 20): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  return check();
}
