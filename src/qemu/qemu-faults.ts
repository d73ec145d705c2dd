/**
 * QEMU's own failure signals turned into kemari faults (seed 000: event-driven notification instead of polling):
 * QMP events and the death of the QEMU process feed `primary.reportFault`, so the standby takes over at once
 * instead of waiting for heartbeats to time out.
 *
 * What is fatal: GUEST_PANICKED; BLOCK_IO_ERROR (the disk failed: the standby has its own copy of every committed
 * write), except ENOSPC, which is kemari's own backpressure when an epoch's disk log is full (a warning, and the
 * STOP QEMU follows it with is expected); a STOP kemari did not ask for (QEMU paused the guest on an error); SHUTDOWN caused by the host (a signal,
 * a QMP quit); the QMP session closing or the process exiting. Warnings: a guest-initiated SHUTDOWN or RESET (the
 * guest meant it; after a guest's SHUTDOWN, the STOP of a QEMU run with `-no-shutdown` is expected, and
 * `onGuestStopped` hears of it: the guest stopped on its own, which calls for a stand-down, not a failover),
 * everything else is ignored. {@link classifyQemuEvent} is the pure decision; {@link watchQemuFaults}
 * wires it to a running QEMU.
 */
import type { QmpClient } from './qmp-client.js';
import type { QmpEvent } from './qmp-core.js';
import type { QemuExit } from './qemu-process.js';

/** A fault as `Primary.reportFault` takes it. */
export interface QemuFault {
  source: 'qmp' | 'qemu';
  severity: 'fatal' | 'warning';
  detail: string;
}

/**
 * True for a SHUTDOWN that is the guest powering itself off (reason `guest-shutdown`): not one caused by the host,
 * nor a guest's reset or panic that `-no-reboot` or a panic action turned into a shutdown (those stay warnings or
 * faults, and never end protection).
 */
export function isGuestShutdown(event: QmpEvent): boolean {
  return event.event === 'SHUTDOWN' && event.data.reason === 'guest-shutdown';
}

/** Decides what a QMP event means; `ownStop` says whether kemari itself stopped the VM (a checkpoint). */
export function classifyQemuEvent(event: QmpEvent, ownStop: boolean): QemuFault | undefined {
  const data = event.data;
  switch (event.event) {
    case 'GUEST_PANICKED':
      return { source: 'qmp', severity: 'fatal', detail: `GUEST_PANICKED ${JSON.stringify(data.info ?? data.action ?? {})}` };
    case 'BLOCK_IO_ERROR':
      // ENOSPC is kemari's own backpressure (the epoch's disk write log is full, QemuDisk answers NBD ENOSPC): QEMU
      // stops the guest until the next capture continues it. Not a failure of the disk.
      if (data.nospace === true) return { source: 'qmp', severity: 'warning', detail: `BLOCK_IO_ERROR (no space: the epoch's disk log is full) on ${String(data.device ?? data['node-name'] ?? '?')}` };
      return { source: 'qmp', severity: 'fatal', detail: `BLOCK_IO_ERROR on ${String(data.device ?? data['node-name'] ?? '?')}: ${String(data.operation ?? '')} ${String(data.reason ?? '')}`.trim() };
    case 'STOP':
      return ownStop ? undefined : { source: 'qmp', severity: 'fatal', detail: 'STOP: QEMU paused the guest on its own' };
    case 'SHUTDOWN': {
      const reason = String(data.reason ?? 'unknown');
      const byGuest = data.guest === true || reason.startsWith('guest-');
      return { source: 'qmp', severity: byGuest ? 'warning' : 'fatal', detail: `SHUTDOWN (${reason})` };
    }
    case 'RESET':
      return { source: 'qmp', severity: 'warning', detail: `RESET (${String(data.reason ?? 'unknown')})` };
    default:
      return undefined;
  }
}

/** What {@link watchQemuFaults} watches. */
export interface QemuFaultSources {
  qmp: QmpClient;
  /** Settles when the QEMU process exits (see startQemu); omit when QEMU was not started by us. */
  exited?: Promise<QemuExit>;
}

/**
 * Reports every fault of a running QEMU to `report` (e.g. `(f) => primary.reportFault(f)`), the process's end
 * once. `ownStop()` must say true while kemari's own `stop` is in effect. `onGuestStopped` hears of every SHUTDOWN
 * the guest asked for (after its warning was reported). Returns a function that stops watching.
 */
export function watchQemuFaults(
  sources: QemuFaultSources,
  report: (fault: QemuFault) => void,
  ownStop: () => boolean,
  onGuestStopped?: (detail: string) => void,
): () => void {
  let watching = true;
  let ended = false;
  const end = (detail: string): void => {
    if (!watching || ended) return;
    ended = true;
    report({ source: 'qemu', severity: 'fatal', detail });
  };
  // After a no-space BLOCK_IO_ERROR, QEMU stops the guest itself (runstate io-error): that STOP is expected. So is
  // the STOP after a guest's own SHUTDOWN in a QEMU run with -no-shutdown (runstate shutdown).
  let expectedStop = false;
  const onEvent = (event: QmpEvent): void => {
    if (!watching) return;
    if ((event.event === 'BLOCK_IO_ERROR' && event.data.nospace === true) || isGuestShutdown(event)) expectedStop = true;
    if (event.event === 'STOP' && expectedStop) {
      expectedStop = false;
      return;
    }
    if (event.event === 'RESUME') expectedStop = false;
    const fault = classifyQemuEvent(event, ownStop());
    if (fault !== undefined) report(fault);
    if (isGuestShutdown(event)) onGuestStopped?.(fault?.detail ?? 'SHUTDOWN');
  };
  sources.qmp.on('event', onEvent);
  void sources.qmp.closed.then((reason) => end(`the QMP session closed: ${reason.message}`));
  void sources.exited?.then((exit) => end(`QEMU exited (${exit.signal ?? `code ${exit.code}`})`));
  return () => {
    watching = false;
    sources.qmp.off('event', onEvent);
  };
}
