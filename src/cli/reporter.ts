/**
 * What the `kemari` commands print: a progress bar during the initial full sync and a status line of epochs per
 * second, dirty pages and commit latency (redrawn in place on a terminal, one line every few seconds otherwise), or,
 * with `--json`, one JSON object per event for log collectors. Hand-written: it is one line of text.
 */

/** Where the commands write. */
export interface CliIo {
  stdout: { write(text: string): unknown; isTTY?: boolean };
  stderr: { write(text: string): unknown };
}

/** Bar width in characters. */
const BAR_CHARS = 30;

export class Reporter {
  private lastLineMs = 0;
  private drawn = false;

  constructor(
    private readonly io: CliIo,
    private readonly json: boolean,
    /** Non-terminal status lines at most this often. */
    private readonly plainEveryMs = 5000,
  ) {}

  /** A notable event: a line of text, or one JSON object. */
  event(name: string, fields: Record<string, unknown> = {}, text?: string): void {
    if (this.json) {
      this.io.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), event: name, ...fields }, jsonSafe)}\n`);
      return;
    }
    this.clearLine();
    this.io.stdout.write(`${text ?? `${name} ${JSON.stringify(fields, jsonSafe)}`}\n`);
  }

  /** An error, to stderr (or as a JSON event). */
  error(message: string, fields: Record<string, unknown> = {}): void {
    if (this.json) this.event('error', { message, ...fields });
    else {
      this.clearLine();
      this.io.stderr.write(`kemari: ${message}\n`);
    }
  }

  /** The full sync's progress bar. */
  progress(sentBytes: number, totalBytes: number): void {
    if (this.json || this.io.stdout.isTTY !== true) return;
    const fraction = totalBytes > 0 ? Math.min(1, sentBytes / totalBytes) : 0;
    const filled = Math.round(fraction * BAR_CHARS);
    this.io.stdout.write(`\r\x1b[2Kfull sync [${'#'.repeat(filled)}${'.'.repeat(BAR_CHARS - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}% ${mib(sentBytes)}/${mib(totalBytes)} MiB`);
    this.drawn = true;
  }

  /** The status line. */
  status(line: string, fields: Record<string, unknown>): void {
    if (this.json) return this.event('status', fields);
    if (this.io.stdout.isTTY === true) {
      this.io.stdout.write(`\r\x1b[2K${line}`);
      this.drawn = true;
      return;
    }
    const nowMs = performance.now();
    if (nowMs - this.lastLineMs < this.plainEveryMs) return;
    this.lastLineMs = nowMs;
    this.io.stdout.write(`${line}\n`);
  }

  private clearLine(): void {
    if (this.drawn) this.io.stdout.write('\r\x1b[2K');
    this.drawn = false;
  }
}

function mib(bytes: number): string {
  return (bytes / (1 << 20)).toFixed(1);
}

/** JSON.stringify replacer: bigint as strings, byte arrays as their length. */
function jsonSafe(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Uint8Array) return { bytes: value.byteLength };
  if (value instanceof Error) return { name: value.name, message: value.message, ...(('code' in value) ? { code: (value as { code: unknown }).code } : {}) };
  return value;
}
