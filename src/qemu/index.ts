/**
 * `kemari/qemu`: the layer that protects a real QEMU VM. QMP (commands, events, clean errors when QEMU dies), the
 * QEMU process driver, QEMU 7.2's migration stream (a streaming parser and a writer whose streams QEMU loads), and
 * the NBD server that serves the VM's disk so every write of an epoch rides in that epoch's transaction.
 */
export { QmpClient, QMP_COMMAND_TIMEOUT_MS_DEFAULT } from './qmp-client.js';
export type { QmpClientEvents, QmpConnectOptions, QmpEvent, QmpExecuteOptions, QmpGreeting } from './qmp-client.js';
export { startQemu } from './qemu-process.js';
export type { QemuExit, QemuProcess, QemuStartOptions } from './qemu-process.js';
export { MigrationStreamParser, MIGRATION_PARSER_DEFAULTS } from './migration/stream-parser.js';
export type { MigrationStreamParserOptions } from './migration/stream-parser.js';
export { migrationStreamBytes, writeMigrationStream } from './migration/stream-writer.js';
export type { MigrationStreamSpec, RamSectionIds } from './migration/stream-writer.js';
export { RamImage } from './migration/ram-image.js';
export { imagePages, isZeroPage } from './migration/image-pages.js';
export type * from './migration/records.js';
export * from './nbd/index.js';
export { classifyQemuEvent, watchQemuFaults } from './qemu-faults.js';
export type { QemuFault, QemuFaultSources } from './qemu-faults.js';
export * from './taps/index.js';
export { QemuVm } from './qemu-vm.js';
export type { QemuVmAdoptOptions, QemuVmAttachOptions, QemuVmLaunchOptions, QemuVmStats } from './qemu-vm.js';
export { QemuDisk, QEMU_DISK_LOG_BYTES_MAX_DEFAULT } from './qemu-disk.js';
export type { QemuDiskOptions } from './qemu-disk.js';
export { QemuStandby, restoreQemu } from './qemu-standby.js';
export type { QemuRestoreStats, QemuStandbyOptions } from './qemu-standby.js';
export { QEMU_DEVICE_NAME, parseQemuDeviceState, qemuDeviceState } from './qemu-device-state.js';
export type { QemuDeviceState } from './qemu-device-state.js';
export { SHARED_MEMORY_BACKEND_ID, SHARED_MEMORY_CHANGE_DETECTIONS, qemuArgs, sharedMemoryArgs } from './qemu-machine.js';
export type { QemuMachineOptions, SharedMemoryChangeDetection, SharedMemoryOptions } from './qemu-machine.js';
