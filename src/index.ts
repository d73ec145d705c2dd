/**
 * kemari: fault-tolerant VMs by continuous transactional checkpointing to a standby host.
 *
 * This entry point re-exports the public API: the Primary and Secondary drivers, the SimulatedVm (the embedded
 * default VM) and its workload, the event-tap, the VmAdapter contract, the transports and the wire protocol.
 * The QEMU layer (QMP, migration stream, NBD server) lives at the subpath `kemari/qemu`.
 */
export { ERROR_CODES, KemariError, isKemariError } from './errors.js';
export type { ErrorCode, KemariErrorOptions } from './errors.js';
export * from './wire/index.js';
export { Primary } from './primary/primary.js';
export type { Fault, PostMortem, PrimaryCapture, PrimaryCommit, PrimaryOptions, PrimaryState, PrimaryStats, Reprotection, StandDownOptions, StoodDownPrimary, SyncProgress } from './primary/primary.js';
export { Secondary } from './secondary/secondary.js';
export type { Promotion, SecondaryCommit, SecondaryOptions, SecondaryState, SecondaryStats, StoodDown } from './secondary/secondary.js';
export { DEFAULT_IDLE_INTERVAL_MS } from './checkpoint/controller.js';
export type { SyncPolicy } from './checkpoint/controller.js';
export { EventTap } from './tap/event-tap.js';
export type { EventTapOptions, ReleasedOutput } from './tap/event-tap.js';
export type { CaptureOptions, EpochCapture, VmAdapter } from './vm/adapter.js';
export { SIMULATED_DEVICE_NAMES, SimulatedVm } from './vm/simulated-vm.js';
export type { CpuState, DiskControllerState, NicState, SimulatedVmOptions, SimulatedVmSnapshot, SimulatedVmStats } from './vm/simulated-vm.js';
export { Workload } from './vm/workload.js';
export type { WorkloadOptions } from './vm/workload.js';
export { Prng } from './vm/prng.js';
export { Replica } from './replica/replica.js';
export type { ReplayEvent, ReplicaGeometry, ReplicaSnapshot } from './replica/replica.js';
export { STATE_DIGEST_BYTES, computeStateDigest, digestHex } from './replica/state-digest.js';
export type { StateDigestInput } from './replica/state-digest.js';
export { connect, listen, memoryPair, faultyPair } from './transport/index.js';
export type { Connection, ConnectOptions, ConnectTlsOptions, Endpoint, Listener, ListenOptions, TlsCredentials } from './transport/index.js';
export type { Arbiter, Lease } from './failover/arbiter.js';
export { WitnessServer } from './failover/witness-server.js';
export type { WitnessServerOptions } from './failover/witness-server.js';
export { WitnessArbiter } from './failover/witness-arbiter.js';
export type { WitnessArbiterOptions } from './failover/witness-arbiter.js';
export { FailureDetector } from './failover/failure-detector.js';
export type { PeerVerdict } from './failover/failure-detector.js';
export { Journal } from './replica/journal.js';
export type { JournalOptions, JournalOpenResult, JournalRecovery, JournalStats } from './replica/journal.js';
export { EtcdArbiter } from './failover/etcd-arbiter.js';
export type { EtcdArbiterOptions } from './failover/etcd-arbiter.js';
export { realTimers } from './time/timers.js';
export type { TimerHandle, Timers } from './time/timers.js';
export { mergeCaptures } from './vm/merge-captures.js';
export type { JournalFile, JournalFs, JournalOpenMode } from './replica/journal.js';
export * from './pages/index.js';
