/**
 * A tap's sink for a Primary that does not exist yet. A guest launched stopped starts running at the full sync's
 * capture, but Primary.start resolves only once that sync is acked: output the guest makes in between (a boot
 * banner) must neither be lost nor fail the tap. Outputs handed to the sink before {@link LateSink.bind} are kept,
 * in order, and handed to the Primary's event-tap by `bind` itself, before anything that comes after.
 *
 * A refusal (KEMARI_TAP_FULL) of a kept output reaches the tap's pipeline late, which it treats as fatal unless it
 * is the newest output: keep what a guest prints before it is protected small (the event-tap holds thousands).
 */
import type { Primary } from '../primary/primary.js';

interface Kept {
  channel: string;
  data: Uint8Array;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/** See the module comment; pass {@link LateSink.sink} as a SerialTap's or NetTap's `sink`. */
export class LateSink {
  private primary: Primary | undefined;
  private kept: Kept[] = [];

  /** The sink: `primary.tap.output`, once there is a primary. */
  readonly sink = (channel: string, data: Uint8Array): Promise<void> => {
    const primary = this.primary;
    if (primary !== undefined) return primary.tap.output(channel, data);
    return new Promise((resolve, reject) => this.kept.push({ channel, data, resolve, reject }));
  };

  /** Outputs go to `primary` from now on; the kept ones first, handed over here, in order. */
  bind(primary: Primary): void {
    this.primary = primary;
    const kept = this.kept;
    this.kept = [];
    for (const output of kept) primary.tap.output(output.channel, output.data).then(output.resolve, output.reject);
  }
}
