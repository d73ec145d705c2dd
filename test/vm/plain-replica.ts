import type { EpochCapture } from '../../src/vm/adapter.js';
import type { SimulatedVmSnapshot } from '../../src/vm/simulated-vm.js';
import type { DiskInfo } from '../../src/wire/bodies/hello.js';
import { PageKind } from '../../src/wire/bodies/pages.js';
import { pack, unpack } from '../../src/wire/msgpack.js';

/**
 * The simplest possible replica: a memory copy, a device map and disk copies, starting zeroed like a new VM, to
 * which captures are applied in order. Device states go through msgpack as they would on the wire.
 */
export class PlainReplica {
  readonly memory: Uint8Array;
  readonly devices = new Map<string, unknown>();
  readonly disks: { id: number; bytes: number; data: Uint8Array }[];
  applied = 0;

  constructor(
    readonly memoryBytes: number,
    readonly pageBytes: number,
    disks: readonly DiskInfo[],
  ) {
    this.memory = new Uint8Array(memoryBytes);
    this.disks = disks.map((d) => ({ id: d.id, bytes: d.bytes, data: new Uint8Array(d.bytes) }));
  }

  apply(capture: EpochCapture): void {
    for (const page of capture.pages) {
      const start = page.index * this.pageBytes;
      if (page.kind === PageKind.ZERO) this.memory.fill(0, start, start + this.pageBytes);
      else if (page.kind === PageKind.RAW) this.memory.set(page.data, start);
      else throw new Error(`unexpected page kind ${page.kind}`);
    }
    for (const device of capture.devices) this.devices.set(device.name, unpack('test', pack('test', device.state)));
    for (const write of capture.diskWrites) {
      const disk = this.disks.find((d) => d.id === write.diskId);
      if (disk === undefined) throw new Error(`no disk ${write.diskId}`);
      disk.data.set(write.data, write.offset);
    }
    this.applied += 1;
  }

  snapshot(): SimulatedVmSnapshot {
    return { memoryBytes: this.memoryBytes, pageBytes: this.pageBytes, memory: this.memory, devices: this.devices, disks: this.disks };
  }
}
