/**
 * When to take a checkpoint, sans I/O: the driver asks after anything that may change the answer (an output was
 * tapped, an ack arrived, a capture finished, a timer fired), passing the time and the facts; the controller
 * answers and says when to ask again.
 *
 * Policies:
 * - `event` (Kemari): a tapped output triggers a checkpoint, because output is what the outside world can
 *   observe and what must not be lost. Outputs tapped while `pipelineDepth` transactions are in flight wait and
 *   are coalesced into the next one. `idleIntervalMs` also checkpoints a VM that runs without output, so epochs
 *   (and pause times, and what failover loses) stay bounded.
 * - `periodic` (Remus): an epoch every `intervalMs`; the outputs of an epoch are released when it is acked.
 */
import { KemariError } from '../errors.js';

/** How checkpoints are triggered. */
export type SyncPolicy =
  | { mode: 'event'; idleIntervalMs?: number }
  | { mode: 'periodic'; intervalMs: number };

/** The facts a decision depends on. */
export interface ControllerInput {
  nowMs: number;
  /** Transactions sent and not acked. */
  inFlight: number;
  /** Outputs tapped since the last capture. */
  openOutputs: number;
}

/** Default idle interval of the event policy. */
export const DEFAULT_IDLE_INTERVAL_MS = 1000;

export class CheckpointController {
  private capturing = false;
  private lastCaptureMs: number;
  private readonly intervalMs: number;

  constructor(
    readonly policy: SyncPolicy,
    readonly pipelineDepth: number,
    startMs: number,
  ) {
    const intervalMs = policy.mode === 'periodic' ? policy.intervalMs : (policy.idleIntervalMs ?? DEFAULT_IDLE_INTERVAL_MS);
    if (!(intervalMs > 0) || !Number.isFinite(intervalMs)) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'the sync interval must be a positive number of milliseconds', { details: { intervalMs } });
    }
    if (policy.mode !== 'event' && policy.mode !== 'periodic') {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `unknown sync mode ${String((policy as { mode: unknown }).mode)}`);
    }
    this.intervalMs = intervalMs;
    this.lastCaptureMs = startMs;
  }

  /** Should a capture start now? */
  shouldCapture(input: ControllerInput): boolean {
    if (this.capturing || input.inFlight >= this.pipelineDepth) return false;
    const due = input.nowMs - this.lastCaptureMs >= this.intervalMs;
    return this.policy.mode === 'event' ? input.openOutputs > 0 || due : due;
  }

  /** The time at which to ask again if nothing else happens (a timer), or undefined when only events matter. */
  nextCheckMs(input: ControllerInput): number | undefined {
    if (this.capturing || input.inFlight >= this.pipelineDepth) return undefined;
    return this.lastCaptureMs + this.intervalMs;
  }

  /** A capture has begun (the VM is being paused). */
  captureStarted(nowMs: number): void {
    this.capturing = true;
    this.lastCaptureMs = nowMs;
  }

  /** The capture is done (the VM runs again and the transaction is handed to the sender). */
  captureFinished(): void {
    this.capturing = false;
  }
}
