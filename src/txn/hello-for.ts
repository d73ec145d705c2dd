/**
 * The HELLO a primary sends for a VM: the VM's geometry and inventory, as the secondary must mirror them.
 */
import type { VmAdapter } from '../vm/adapter.js';
import type { Hello } from '../wire/bodies/hello.js';
import { PROTOCOL_VERSION } from '../wire/header.js';

export function primaryHello(vm: VmAdapter, sessionId: string, features: string[], committedTxn = 0): Hello {
  return {
    sessionId,
    role: 'primary',
    versionMin: PROTOCOL_VERSION,
    versionMax: PROTOCOL_VERSION,
    memoryBytes: vm.memoryBytes,
    pageBytes: vm.pageBytes,
    devices: [...vm.deviceNames],
    disks: vm.disks.map((d) => ({ id: d.id, bytes: d.bytes })),
    committedTxn,
    features,
  };
}
