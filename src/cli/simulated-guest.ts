/**
 * The embedded guest the CLI runs when no QEMU is given (`--simulated-mib`): a SimulatedVm driven by a seeded
 * Workload every few milliseconds, its outputs sent through the primary's event-tap. It lets `kemari protect` and
 * `kemari standby` be tried, and scripted, on any machine.
 */
import type { EventTap } from '../tap/event-tap.js';
import { SimulatedVm } from '../vm/simulated-vm.js';
import { Workload } from '../vm/workload.js';

export class SimulatedGuest {
  private timer: NodeJS.Timeout | undefined;
  private tap: EventTap | undefined;
  /** Outputs whose release came back (they reached "the outside"). */
  released = 0;

  constructor(
    readonly vm: SimulatedVm,
    seed: number,
    stepEveryMs: number,
  ) {
    const workload = new Workload(vm, {
      seed,
      output: (channel, data) => {
        this.tap?.output(channel, data).then(
          () => (this.released += 1),
          () => {},
        );
      },
    });
    this.timer = setInterval(() => {
      if (!vm.paused) workload.step();
    }, stepEveryMs);
    this.timer.unref();
  }

  /** A new guest of `memoryMib` MiB with one 16 MiB disk. */
  static create(memoryMib: number, seed: number, stepEveryMs: number): SimulatedGuest {
    return new SimulatedGuest(new SimulatedVm({ memoryBytes: memoryMib << 20, seed, disks: [{ id: 0, bytes: 16 << 20 }] }), seed, stepEveryMs);
  }

  /** From now on outputs go through `tap` (before, the guest's outputs go nowhere: it is not protected yet). */
  attach(tap: EventTap): void {
    this.tap = tap;
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }
}
