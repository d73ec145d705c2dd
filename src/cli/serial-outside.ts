/**
 * "The outside" of a QEMU guest's serial port in the `kemari` CLI: where its released output goes. Raw bytes to a
 * file (`--serial-out`) or to stdout, or, with `--json`, one `serial` event per complete line so the JSON stream
 * stays parseable by log collectors.
 *
 * It can be held ({@link SerialOutside.hold}): on the standby the restored guest starts printing before the
 * promotion's replay is known, and the replay (output of committed epochs the dead primary may not have released)
 * must come out first.
 */
import { createWriteStream } from 'node:fs';
import type { WriteStream } from 'node:fs';
import { once } from 'node:events';
import { KemariError } from '../errors.js';
import type { CliIo, Reporter } from './reporter.js';

/** Options of {@link SerialOutside.open}. */
export interface SerialOutsideOptions {
  /** Append the raw bytes to this file instead of writing them to stdout. */
  file?: string | undefined;
  /** Events go through it (JSON mode). */
  reporter: Reporter;
  /** JSON mode: lines become `serial` events. */
  json: boolean;
  io: CliIo;
  /** Which guest the lines come from (`primary`, `standby`), in the JSON events. */
  source: string;
}

/** Released serial output on its way out of the CLI; see the module comment. */
export class SerialOutside {
  private readonly file: WriteStream | undefined;
  private held: Uint8Array[] | undefined;
  private partial = '';
  private bytes = 0;

  private constructor(
    private readonly options: SerialOutsideOptions,
    file: WriteStream | undefined,
  ) {
    this.file = file;
  }

  /** Opens the file, if one is named (KEMARI_INVALID_ARGUMENT when it cannot be opened). */
  static async open(options: SerialOutsideOptions): Promise<SerialOutside> {
    if (options.file === undefined) return new SerialOutside(options, undefined);
    const file = createWriteStream(options.file, { flags: 'a' });
    try {
      await once(file, 'open');
    } catch (error) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `--serial-out: cannot open ${options.file}: ${(error as Error).message}`, { cause: error, details: { path: options.file } });
    }
    return new SerialOutside(options, file);
  }

  /** Bytes written out so far. */
  get bytesOut(): number {
    return this.bytes;
  }

  /** The SerialTap's `output`: writes now, or keeps the bytes while held. */
  readonly write = (data: Uint8Array): void => {
    if (this.held !== undefined) {
      this.held.push(Uint8Array.from(data));
      return;
    }
    this.emit(data);
  };

  /** Keeps everything written from now on until {@link release}. */
  hold(): void {
    this.held ??= [];
  }

  /** Writes `first` (a replay), then what was kept while held, and writes through from then on. */
  release(first: readonly Uint8Array[] = []): void {
    const kept = this.held ?? [];
    this.held = undefined;
    for (const data of [...first, ...kept]) this.emit(data);
  }

  /** Flushes an unterminated last line (JSON mode) and closes the file. */
  async close(): Promise<void> {
    if (this.options.json && this.partial.length > 0) this.options.reporter.event('serial', { source: this.options.source, line: this.partial, partial: true });
    this.partial = '';
    if (this.file !== undefined) {
      this.file.end();
      await once(this.file, 'close').catch(() => {});
    }
  }

  private emit(data: Uint8Array): void {
    this.bytes += data.byteLength;
    if (this.file !== undefined) {
      this.file.write(data);
      return;
    }
    if (!this.options.json) {
      this.options.io.stdout.write(Buffer.from(data).toString('latin1'));
      return;
    }
    const lines = (this.partial + Buffer.from(data).toString('latin1')).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) this.options.reporter.event('serial', { source: this.options.source, line: line.replace(/\r$/, '') });
  }
}
