/**
 * `kemari protect`: protects a VM by checkpointing it to a standby (`kemari standby`): the embedded simulated guest
 * by default, or a real QEMU (`--qemu-image` launches one on an image served by kemari; `--qmp` attaches to one).
 */
import { parseArgs } from 'node:util';
import { KemariError } from '../errors.js';
import type { Arbiter } from '../failover/arbiter.js';
import type { Fault, PrimaryOptions } from '../primary/primary.js';
import type { Endpoint } from '../transport/index.js';
import { arbiterFrom, parseCount, parseEndpoint, parseSync } from './args.js';
import { CliQemuGuest } from './qemu-guest.js';
import type { GuardStandDown } from './qemu-fault-guard.js';
import { QEMU_FLAGS_HELP, QEMU_FLAG_OPTIONS, qemuMachineArgs, socketDir } from './qemu-options.js';
import { runProtection } from './protection.js';
import { Reporter } from './reporter.js';
import type { CliIo } from './reporter.js';
import { SerialOutside } from './serial-outside.js';
import { SimulatedGuest } from './simulated-guest.js';
import { untilStopped } from './until-stopped.js';

/** The checkpoint interval of an attached QEMU unless --sync says otherwise (ms). */
const ATTACHED_INTERVAL_MS_DEFAULT = 100;

export const PROTECT_HELP = `usage: kemari protect --secondary HOST:PORT|/PATH --session ID [options]

Protects a VM: a full sync to the standby, then one ft-transaction per epoch; the VM's output is held until the
epoch that produced it is acked. Runs until interrupted (SIGINT/SIGTERM), then stops protecting (the VM runs on).

The VM (the simulated guest unless --qemu-image or --qmp is given):
  --simulated-mib N        the embedded simulated guest of N MiB (default 64), driven by a seeded workload
  --workload-ms MS         how often the simulated guest steps (default 5)
  --seed N                 the simulated guest's seed (default 1)
  --qemu-image PATH        launch QEMU on this raw disk image, served by kemari over NBD, so every disk write
                           rides in its epoch (writes land in the file); its serial port (COM1) is tapped: output
                           leaves (stdout or --serial-out) only once its epoch is acked. QEMU's faults and death
                           hand over to the standby at once; a guest that powers itself off ends protection
                           instead (the standby stands down, status 0). Stopping kemari stops this QEMU.
  --qmp PATH               or attach to a QEMU that already runs, by its QMP socket. Its disk is NOT captured
                           (kemari does not serve it: give the standby the same disk, and expect it to hold writes
                           of epochs that never committed) and its serial output is NOT held back. Memory and
                           devices are protected; stopping kemari leaves this QEMU running. Without output to
                           trigger checkpoints, --sync defaults to periodic:${ATTACHED_INTERVAL_MS_DEFAULT} here.
${QEMU_FLAGS_HELP}

Replication:
  --secondary ENDPOINT     where the standby listens (host:port, or an absolute unix socket path)
  --session ID             names the protected VM; the standby serves only this session
  --sync POLICY            'event' (Kemari: output triggers a checkpoint; default) or 'periodic:MS' (Remus)
  --pipeline N             transactions in flight (default 2)
  --verify                 end-to-end state digests, checked by the standby after every epoch
  --heartbeat-ms MS        heartbeat interval (default 100)
  --missed N               silent intervals before the standby is suspected (default 5)
  --heartbeat-path EP      a second, independent heartbeat path (the standby's --heartbeat-listen)
  --on-loss POLICY         when the standby is lost: hold (default), pause, continue
  --reconnect-ms MS        reconnect delay after a loss (default 1000; 0: never)

Single writer:
  --witness HOST:PORT      take the session's lease from a kemari witness
  --etcd HOST:PORT[,...]   or from etcd
  --lease-ttl-ms MS        lease ttl (default 3000)

Output:
  --json                   events and status as JSON lines (the guest's serial lines as 'serial' events)
  --status-ms MS           status line period (default 1000)
  --help                   this text

Exit status: 0 when stopped; 1 when the protected QEMU died (after handing over to the standby) or on an error.
`;

/** Runs until stopped; resolves with the exit code. */
export async function protectCommand(argv: string[], io: CliIo, signal: AbortSignal): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      secondary: { type: 'string' },
      session: { type: 'string' },
      'simulated-mib': { type: 'string' },
      'workload-ms': { type: 'string' },
      seed: { type: 'string' },
      sync: { type: 'string' },
      pipeline: { type: 'string' },
      verify: { type: 'boolean', default: false },
      'heartbeat-ms': { type: 'string' },
      missed: { type: 'string' },
      'heartbeat-path': { type: 'string' },
      'on-loss': { type: 'string' },
      'reconnect-ms': { type: 'string' },
      witness: { type: 'string' },
      etcd: { type: 'string' },
      'lease-ttl-ms': { type: 'string' },
      json: { type: 'boolean', default: false },
      'status-ms': { type: 'string' },
      'qemu-image': { type: 'string' },
      qmp: { type: 'string' },
      ...QEMU_FLAG_OPTIONS,
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    io.stdout.write(PROTECT_HELP);
    return 0;
  }
  const reporter = new Reporter(io, values.json);
  const secondary = parseEndpoint('secondary', values.secondary);
  if (values.session === undefined) throw new KemariError('KEMARI_INVALID_ARGUMENT', '--session is required');
  const onLoss = values['on-loss'] ?? 'hold';
  if (onLoss !== 'hold' && onLoss !== 'pause' && onLoss !== 'continue') throw new KemariError('KEMARI_INVALID_ARGUMENT', '--on-loss must be hold, pause or continue');
  // An attached QEMU's output is not tapped, so no output triggers a checkpoint: epochs on a timer instead.
  const sync = parseSync(values.sync ?? (values.qmp !== undefined ? `periodic:${ATTACHED_INTERVAL_MS_DEFAULT}` : undefined));
  const qemu = values['qemu-image'] !== undefined || values.qmp !== undefined;
  if (values['qemu-image'] !== undefined && values.qmp !== undefined) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'give --qemu-image or --qmp, not both');
  if (values.qmp !== undefined && !values.qmp.startsWith('/')) throw new KemariError('KEMARI_INVALID_ARGUMENT', '--qmp must be the absolute path of a QMP unix socket');
  const machineArgs = qemu ? qemuMachineArgs(values) : [];
  const arbiter = await arbiterFrom(values);
  const options = (vmOptions: Pick<PrimaryOptions, 'vm'>): PrimaryOptions => ({
    ...vmOptions,
    secondary,
    sessionId: values.session!,
    sync,
    pipelineDepth: Math.max(1, parseCount('pipeline', values.pipeline, 2)),
    verify: values.verify,
    heartbeat: { intervalMs: Math.max(1, parseCount('heartbeat-ms', values['heartbeat-ms'], 100)), missedMax: Math.max(1, parseCount('missed', values.missed, 5)) },
    ...(values['heartbeat-path'] === undefined ? {} : { heartbeatPath: parseEndpoint('heartbeat-path', values['heartbeat-path']) }),
    onSecondaryLoss: onLoss,
    reconnectDelayMs: parseCount('reconnect-ms', values['reconnect-ms'], 1000),
    ...(arbiter === undefined ? {} : { arbiter, leaseTtlMs: parseCount('lease-ttl-ms', values['lease-ttl-ms'], 3000) }),
    signal,
  });
  const statusEveryMs = Math.max(50, parseCount('status-ms', values['status-ms'], 1000));
  if (qemu) {
    return protectQemu({ values, machineArgs, secondary, sessionId: values.session, arbiter, options, reporter, io, signal, statusEveryMs });
  }
  const guest = SimulatedGuest.create(parseCount('simulated-mib', values['simulated-mib'], 64), parseCount('seed', values.seed, 1), Math.max(1, parseCount('workload-ms', values['workload-ms'], 5)));
  reporter.event('starting', { secondary, sessionId: values.session, memoryBytes: guest.vm.memoryBytes }, `protecting a ${guest.vm.memoryBytes >> 20} MiB simulated guest to ${values.secondary}`);
  let protection;
  try {
    protection = await runProtection(options({ vm: guest.vm }), reporter, statusEveryMs);
  } catch (error) {
    guest.stop();
    await arbiter?.close();
    throw error;
  }
  guest.attach(protection.primary.tap);
  const why = await untilStopped(signal);
  protection.stopStatus();
  protection.primary.close();
  guest.stop();
  await arbiter?.close();
  const stats = protection.primary.stats();
  reporter.event('stopped', { why, ackedTxn: stats.ackedTxn, epochs: stats.epochs, outputsReleased: stats.outputsReleased }, `stopped (${why}) after ${stats.epochs} epochs, txn ${stats.ackedTxn}`);
  return 0;
}

/** How long a quiesced primary keeps its connection after QEMU died, so the FAILOVER queued behind it drains (ms). */
const FAILOVER_DRAIN_MS = 500;

/**
 * `kemari protect` with a real QEMU: launches or attaches, protects it through its fault guard, and runs until
 * stopped, until QEMU dies (then the primary has quiesced and handed over; the command ends with status 1), or until
 * the guest powers itself off (the primary stands down: status 0 once the standby confirmed, 1 if it did not).
 */
async function protectQemu(ctx: {
  values: { 'qemu-image'?: string | undefined; qmp?: string | undefined; 'qemu-dir'?: string | undefined; 'serial-out'?: string | undefined; json: boolean };
  machineArgs: string[];
  secondary: Endpoint;
  sessionId: string;
  arbiter: Arbiter | undefined;
  options: (vm: Pick<PrimaryOptions, 'vm'>) => PrimaryOptions;
  reporter: Reporter;
  io: CliIo;
  signal: AbortSignal;
  statusEveryMs: number;
}): Promise<number> {
  const { values, reporter } = ctx;
  const image = values['qemu-image'];
  const dir = await socketDir(values['qemu-dir']);
  let outside: SerialOutside | undefined;
  let guest: CliQemuGuest | undefined;
  let protection: Awaited<ReturnType<typeof runProtection>> | undefined;
  try {
    outside = await SerialOutside.open({ file: values['serial-out'], reporter, json: values.json, io: ctx.io, source: 'primary' });
    guest = image !== undefined ? await CliQemuGuest.launch({ image, machineArgs: ctx.machineArgs, dir: dir.path, outside }) : await CliQemuGuest.attach(values.qmp!, dir.path);
    const vm = guest.vm;
    const where = 'path' in ctx.secondary ? ctx.secondary.path : `${ctx.secondary.host}:${ctx.secondary.port}`;
    reporter.event(
      'starting',
      { secondary: ctx.secondary, sessionId: ctx.sessionId, memoryBytes: vm.memoryBytes, qemu: guest.launched ? 'launched' : 'attached', pid: vm.process?.pid, diskBytes: vm.disks[0]?.bytes ?? 0, dir: dir.path },
      guest.launched
        ? `protecting QEMU (pid ${vm.process?.pid}, ${vm.memoryBytes >> 20} MiB of RAM blocks, disk ${image}) to ${where}`
        : `protecting the QEMU at ${values.qmp} to ${where}: memory and devices only, its disk is not captured and its serial output not held`,
    );
    const serialTap = guest.tap;
    // What the guest printed before each checkpoint's stop belongs to that epoch.
    protection = await runProtection(ctx.options({ vm: guest.guard, ...(serialTap === undefined ? {} : { settleOutputs: () => serialTap.settle() }) }), reporter, ctx.statusEveryMs);
    const primary = protection.primary;
    primary.on('fault', (fault: Fault) => reporter.event('fault', { ...fault }, `${fault.severity} fault from ${fault.source}${fault.detail === undefined ? '' : `: ${fault.detail}`}`));
    guest.bind(primary);
    const stopper = new AbortController();
    const guard = guest.guard;
    let ended: { why: string; gone?: string; standDown?: GuardStandDown } = await Promise.race([
      untilStopped(AbortSignal.any([ctx.signal, stopper.signal])).then((why) => ({ why })),
      guard.gone.then((gone) => ({ why: 'qemu-exited', gone })),
      guard.standDown.then((standDown) => ({ why: 'guest-stopped', standDown })),
    ]);
    // A QEMU that ended because its guest powered itself off: the stand-down's outcome decides, not the death.
    if (ended.standDown === undefined && ended.gone !== undefined && guard.guestStoppedReason !== undefined) ended = { why: 'guest-stopped', standDown: await guard.standDown };
    stopper.abort();
    const stats = primary.stats();
    if (ended.standDown !== undefined) {
      const outcome = ended.standDown;
      if ('stoodDown' in outcome) {
        reporter.event(
          'stood-down',
          { txn: outcome.stoodDown.txn, reason: outcome.stoodDown.reason, epochs: stats.epochs, outputsReleased: stats.outputsReleased },
          `the guest powered itself off (${outcome.stoodDown.reason}): protection ended at txn ${outcome.stoodDown.txn}; the standby stood down and will not resume it`,
        );
        return 0;
      }
      const error = outcome.error;
      reporter.error(`the guest powered itself off, but the standby did not confirm the stand-down (${error instanceof Error ? error.message : String(error)}): whether it takes over is unknown`, {
        code: error instanceof KemariError ? error.code : undefined,
      });
      return 1;
    }
    if (ended.gone !== undefined) {
      // The guard reported the death: the primary quiesced and queued FAILOVER; let it reach the standby.
      await new Promise((resolve) => setTimeout(resolve, FAILOVER_DRAIN_MS));
      reporter.event(
        'qemu-exited',
        { reason: ended.gone, state: primary.state, ackedTxn: stats.ackedTxn, epochs: stats.epochs, outputsReleased: stats.outputsReleased },
        `QEMU is gone (${ended.gone}): handed over to the standby at txn ${stats.ackedTxn} after ${stats.epochs} epochs`,
      );
      return 1;
    }
    reporter.event('stopped', { why: ended.why, ackedTxn: stats.ackedTxn, epochs: stats.epochs, outputsReleased: stats.outputsReleased }, `stopped (${ended.why}) after ${stats.epochs} epochs, txn ${stats.ackedTxn}`);
    return 0;
  } finally {
    protection?.stopStatus();
    protection?.primary.close();
    await guest?.close();
    await outside?.close();
    await ctx.arbiter?.close();
    await dir.remove();
  }
}
