/** In-process runs of the `kemari` command for tests: captured output, its --json events, and waiting on them. */
import type { CliIo } from '../../src/cli/reporter.js';

/** One --json event line. */
export type CliEvent = Record<string, unknown>;

/** Captures a command's output; `events()` parses its --json lines. */
export function captureCliIo(): CliIo & { out: string[]; err: string[]; events(): CliEvent[] } {
  const out: string[] = [];
  const err: string[] = [];
  return {
    out,
    err,
    stdout: { write: (t: string) => out.push(t), isTTY: false },
    stderr: { write: (t: string) => err.push(t) },
    events: () =>
      out
        .join('')
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as CliEvent),
  };
}

/** Polls `probe` every 20 ms until it returns a value; fails naming `what` after `timeoutMs`. */
export async function waitFor<T>(probe: () => T | undefined, what: string, timeoutMs = 15_000): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
