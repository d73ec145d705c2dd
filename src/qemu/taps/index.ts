/**
 * The I/O taps between a QEMU guest and the outside world: serial and network output leave only through the
 * event-tap (held until their epoch is acked), input passes straight through, and a promotion's pending outputs are
 * replayed first on the new primary. Re-exported by `kemari/qemu`.
 */
export { SerialTap, SERIAL_CHANNEL_DEFAULT } from './serial-tap.js';
export type { SerialTapEvents, SerialTapOptions, SerialTapStats } from './serial-tap.js';
export { NetTap, NET_CHANNEL_DEFAULT, TO_GUEST_BUFFERED_BYTES_MAX_DEFAULT } from './net-tap.js';
export type { NetTapEvents, NetTapOptions, NetTapQemuArgsOptions, NetTapStats } from './net-tap.js';
export { PendingReplay } from './replay.js';
export {
  OutputPipeline,
  OUTPUT_BYTES_MAX_DEFAULT,
  OUTPUTS_IN_FLIGHT_MAX_DEFAULT,
  IN_FLIGHT_BYTES_MAX_DEFAULT,
  TAP_FULL_RETRY_DELAY_MS_DEFAULT,
} from './output-pipeline.js';
export type { OutputPipelineOptions, OutputPipelineStats, OutputSink } from './output-pipeline.js';
export { StreamFrameSplitter, encodeStreamFrameHeader, NET_FRAME_BYTES_MAX_DEFAULT, STREAM_FRAME_HEADER_BYTES } from './stream-frame-splitter.js';
