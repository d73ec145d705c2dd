import { describe, expect, it } from 'vitest';
import { CheckpointController } from '../../src/checkpoint/controller.js';

describe('CheckpointController', () => {
  it('event policy: an output triggers a checkpoint when a pipeline slot is free', () => {
    const c = new CheckpointController({ mode: 'event' }, 1, 0);
    expect(c.shouldCapture({ nowMs: 1, inFlight: 0, openOutputs: 0 })).toBe(false);
    expect(c.shouldCapture({ nowMs: 1, inFlight: 0, openOutputs: 1 })).toBe(true);
    // While one is in flight at depth 1, outputs wait (and will be coalesced into the next).
    expect(c.shouldCapture({ nowMs: 1, inFlight: 1, openOutputs: 5 })).toBe(false);
    c.captureStarted(2);
    expect(c.shouldCapture({ nowMs: 2, inFlight: 0, openOutputs: 5 })).toBe(false);
    c.captureFinished();
    expect(c.shouldCapture({ nowMs: 3, inFlight: 0, openOutputs: 5 })).toBe(true);
  });

  it('event policy: an idle VM is still checkpointed every idleIntervalMs', () => {
    const c = new CheckpointController({ mode: 'event', idleIntervalMs: 100 }, 2, 0);
    expect(c.shouldCapture({ nowMs: 99, inFlight: 0, openOutputs: 0 })).toBe(false);
    expect(c.nextCheckMs({ nowMs: 99, inFlight: 0, openOutputs: 0 })).toBe(100);
    expect(c.shouldCapture({ nowMs: 100, inFlight: 0, openOutputs: 0 })).toBe(true);
  });

  it('periodic policy: every intervalMs, outputs or not, within the pipeline depth', () => {
    const c = new CheckpointController({ mode: 'periodic', intervalMs: 25 }, 2, 0);
    expect(c.shouldCapture({ nowMs: 24, inFlight: 0, openOutputs: 9 })).toBe(false);
    expect(c.shouldCapture({ nowMs: 25, inFlight: 1, openOutputs: 0 })).toBe(true);
    c.captureStarted(25);
    c.captureFinished();
    expect(c.nextCheckMs({ nowMs: 26, inFlight: 1, openOutputs: 0 })).toBe(50);
    expect(c.shouldCapture({ nowMs: 60, inFlight: 2, openOutputs: 0 })).toBe(false);
    expect(c.nextCheckMs({ nowMs: 60, inFlight: 2, openOutputs: 0 })).toBeUndefined();
  });

  it('refuses bad policies', () => {
    expect(() => new CheckpointController({ mode: 'periodic', intervalMs: 0 }, 1, 0)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    expect(() => new CheckpointController({ mode: 'sometimes' } as never, 1, 0)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });
});
