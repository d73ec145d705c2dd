/**
 * `kemari standby`: keeps the replica of a protected VM and takes over when the primary fails (a FAILOVER from a
 * quiesced primary, or, with an arbiter, a silent primary whose lease it could take). After taking over it runs
 * the VM from the last committed epoch (the simulated guest, or with `--qemu` a standby QEMU started ahead),
 * replays the outputs the primary may not have released, and, with `--then-protect`, protects it to a new standby
 * at once.
 */
import { parseArgs } from 'node:util';
import { KemariError } from '../errors.js';
import type { Fault } from '../primary/primary.js';
import type { QemuVm } from '../qemu/qemu-vm.js';
import { PendingReplay } from '../qemu/taps/replay.js';
import { SERIAL_CHANNEL_DEFAULT } from '../qemu/taps/serial-tap.js';
import { Secondary } from '../secondary/secondary.js';
import type { Promotion, SecondaryCommit, StoodDown } from '../secondary/secondary.js';
import type { VmAdapter } from '../vm/adapter.js';
import type { SimulatedVm } from '../vm/simulated-vm.js';
import type { Hello } from '../wire/bodies/hello.js';
import { arbiterFrom, parseCount, parseEndpoint } from './args.js';
import { QemuFaultGuard } from './qemu-fault-guard.js';
import { QEMU_FLAGS_HELP, QEMU_FLAG_OPTIONS, qemuMachineArgs, socketDir } from './qemu-options.js';
import { CliQemuStandby } from './qemu-standby-host.js';
import { runProtection } from './protection.js';
import { Reporter } from './reporter.js';
import type { CliIo } from './reporter.js';
import { SerialOutside } from './serial-outside.js';
import { SimulatedGuest } from './simulated-guest.js';
import { untilStopped } from './until-stopped.js';

export const STANDBY_HELP = `usage: kemari standby --listen HOST:PORT|/PATH --session ID [options]

Keeps the replica of a protected VM, one committed epoch at a time, and fails over when the primary fails.
Runs until interrupted (SIGINT/SIGTERM).

  --listen ENDPOINT        where to listen for the primary (host:port, or an absolute unix socket path)
  --session ID             the session to serve (the primary's --session)
  --journal DIR            durable: journal every transaction (synced) before acking; a restart recovers from it
  --verify                 check the primary's state digest after every epoch
  --heartbeat-ms MS        heartbeat interval (default 100)
  --missed N               silent intervals before the primary is suspected (default 5)
  --heartbeat-listen EP    accept the primary's second heartbeat path here
  --witness HOST:PORT      automatic failover under a lease from a kemari witness
  --etcd HOST:PORT[,...]   or from etcd
  --lease-ttl-ms MS        lease ttl (default 3000)
  --then-protect ENDPOINT  after taking over, protect the VM to a new standby there
  --workload-ms MS         how often the resumed simulated guest steps (default 5)

QEMU (the primary runs 'kemari protect --qemu-image' or '--qmp'):
  --qemu                   take over into a standby QEMU with the primary's machine, started (stopped, waiting
                           for a restore) as soon as the primary connects, so a takeover only loads the committed
                           epoch and continues it. Then the outputs the primary may not have released are
                           replayed and the guest's serial output (COM1) follows, on stdout or --serial-out.
                           Stopping the standby after a takeover stops that QEMU.
${QEMU_FLAGS_HELP}
  --json                   events and status as JSON lines
  --status-ms MS           status line period (default 1000)
  --help                   this text
`;

/** Runs until stopped; resolves with the exit code. */
export async function standbyCommand(argv: string[], io: CliIo, signal: AbortSignal): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      listen: { type: 'string' },
      session: { type: 'string' },
      journal: { type: 'string' },
      verify: { type: 'boolean', default: false },
      'heartbeat-ms': { type: 'string' },
      missed: { type: 'string' },
      'heartbeat-listen': { type: 'string' },
      witness: { type: 'string' },
      etcd: { type: 'string' },
      'lease-ttl-ms': { type: 'string' },
      'then-protect': { type: 'string' },
      'workload-ms': { type: 'string' },
      json: { type: 'boolean', default: false },
      'status-ms': { type: 'string' },
      qemu: { type: 'boolean', default: false },
      ...QEMU_FLAG_OPTIONS,
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    io.stdout.write(STANDBY_HELP);
    return 0;
  }
  const reporter = new Reporter(io, values.json);
  const listenAt = parseEndpoint('listen', values.listen);
  if (values.session === undefined) throw new KemariError('KEMARI_INVALID_ARGUMENT', '--session is required');
  const thenProtect = values['then-protect'] === undefined ? undefined : parseEndpoint('then-protect', values['then-protect']);
  const heartbeat = { intervalMs: Math.max(1, parseCount('heartbeat-ms', values['heartbeat-ms'], 100)), missedMax: Math.max(1, parseCount('missed', values.missed, 5)) };
  const leaseTtlMs = parseCount('lease-ttl-ms', values['lease-ttl-ms'], 3000);
  const statusEveryMs = Math.max(50, parseCount('status-ms', values['status-ms'], 1000));
  const heartbeatListen = values['heartbeat-listen'] === undefined ? undefined : parseEndpoint('heartbeat-listen', values['heartbeat-listen']);
  const machineArgs = values.qemu ? qemuMachineArgs(values) : undefined;
  if (!values.qemu && (values['serial-out'] !== undefined || values['qemu-arg'] !== undefined || values['qemu-mib'] !== undefined)) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', 'the QEMU flags need --qemu');
  }
  const arbiter = await arbiterFrom(values);
  // With --qemu: the standby QEMU's sockets, the outside of its serial port, and the QEMU itself (on HELLO).
  let qemu: { standby: CliQemuStandby; outside: SerialOutside; removeDir(): Promise<void> } | undefined;
  let secondary: Secondary<VmAdapter>;
  try {
    if (machineArgs !== undefined) {
      const dir = await socketDir(values['qemu-dir']);
      const outside = await SerialOutside.open({ file: values['serial-out'], reporter, json: values.json, io, source: 'standby' }).catch(async (error: unknown) => {
        await dir.remove();
        throw error;
      });
      const standby = await CliQemuStandby.create({
        machineArgs,
        dir: dir.path,
        outside,
        onProblem: (error) => reporter.error(error.message, { code: error.code }),
        onReady: (pid) => reporter.event('standby-ready', { pid }, `standby QEMU ready (pid ${pid}), waiting for a takeover`),
      }).catch(async (error: unknown) => {
        await outside.close();
        await dir.remove();
        throw error;
      });
      qemu = { standby, outside, removeDir: () => dir.remove() };
    }
    const standby = qemu?.standby;
    secondary = await Secondary.listen<VmAdapter>({
      ...listenAt,
      sessionId: values.session,
      verify: values.verify,
      heartbeat,
      ...(values.journal === undefined ? {} : { journalDir: values.journal }),
      ...(heartbeatListen === undefined ? {} : { heartbeatPath: heartbeatListen }),
      ...(arbiter === undefined ? {} : { arbiter, leaseTtlMs, holder: `standby:${process.pid}` }),
      ...(standby === undefined ? {} : { restoreVm: (snapshot) => standby.restore(snapshot) }),
    });
  } catch (error) {
    await closeQemu(qemu);
    await arbiter?.close();
    throw error;
  }
  reporter.event(
    'listening',
    { listen: listenAt, port: secondary.port, committedTxn: secondary.committedTxn },
    `standby listening on ${'path' in listenAt ? listenAt.path : `${listenAt.host}:${secondary.port}`}${secondary.committedTxn > 0 ? ` (journal recovered txn ${secondary.committedTxn})` : ''}`,
  );
  let commits = 0;
  secondary.on('session', (hello: Hello) => {
    reporter.event('session', { sessionId: values.session }, `primary connected (session ${values.session})`);
    qemu?.standby.prepare(hello.disks);
  });
  secondary.on('commit', (c: SecondaryCommit) => {
    commits += 1;
    if (c.full) reporter.event('full-sync', { txn: c.txn, bytes: c.bytes }, `full sync committed (txn ${c.txn}, ${(c.bytes / (1 << 20)).toFixed(1)} MiB)`);
  });
  secondary.on('primaryLost', (e: KemariError) => reporter.event('primary-lost', { message: e.message }, `primary lost: ${e.message}`));
  secondary.on('linkDown', (e: KemariError) => reporter.event('link-down', { message: e.message }, `replication link down: ${e.message}`));
  // A takeover into QEMU can fail (QEMU refusing the restore stream): say so.
  if (qemu !== undefined) secondary.on('error', (e: KemariError) => reporter.error(e.message, { code: e.code }));
  const timer = setInterval(() => {
    const s = secondary.stats();
    reporter.status(`${s.state} committed txn ${s.committedTxn} | ${commits} epochs | ${(s.bytesApplied / (1 << 20)).toFixed(1)} MiB applied`, { state: s.state, committedTxn: s.committedTxn, epochs: s.epochs, bytesApplied: s.bytesApplied });
  }, statusEveryMs);
  timer.unref();

  let guest: SimulatedGuest | undefined;
  let stopProtection: (() => void) | undefined;
  let stopWatching: (() => void) | undefined;
  /** The guard of a promoted QEMU protected again: its guest powering itself off ends this command too. */
  let reprotected: QemuFaultGuard | undefined;
  let stopping = false;
  const promoted = new Promise<Promotion<VmAdapter>>((resolve) => secondary.once('promoted', resolve));
  const stoodDown = new Promise<StoodDown>((resolve) => secondary.once('stood-down', resolve));
  const stopped = untilStopped(signal);
  const first = await Promise.race([promoted.then((p) => ({ p })), stoodDown.then((down) => ({ why: 'stood-down', down })), stopped.then((why) => ({ why }))]);
  clearInterval(timer);
  if ('down' in first) {
    // The guest stopped on its own: nothing to take over, now or later.
    reporter.event(
      'stood-down',
      { txn: first.down.txn, reason: first.down.reason },
      `the protected guest stopped on its own (${first.down.reason}) at txn ${first.down.txn}: standing down, it will not be resumed here`,
    );
  }
  if ('p' in first) {
    const promotion = first.p;
    reporter.event(
      'promoted',
      { txn: promotion.txn, replay: promotion.replay.length, generation: promotion.lease?.generation },
      `took over at txn ${promotion.txn}; replaying ${promotion.replay.length} outputs the primary may not have released`,
    );
    let guard: QemuFaultGuard | undefined;
    if (qemu !== undefined) {
      const restore = qemu.standby.lastRestore;
      const vm = promotion.vm as QemuVm;
      if (restore !== undefined) {
        reporter.event(
          'restored',
          { pid: vm.process?.pid, ...restore },
          `the guest runs in QEMU pid ${vm.process?.pid}: restored in ${(restore.prepareMs + restore.loadMs + restore.contMs).toFixed(1)} ms (stream ${(restore.streamBytes / (1 << 20)).toFixed(1)} MiB)`,
        );
      }
      // The replay first, then what the restored guest printed meanwhile, then its output as it comes.
      qemu.outside.release(new PendingReplay(promotion.replay).take(SERIAL_CHANNEL_DEFAULT));
      guard = new QemuFaultGuard(vm);
      void guard.gone.then((reason) => {
        if (!stopping) reporter.event('qemu-exited', { reason }, `the promoted QEMU is gone: ${reason}`);
      });
    } else {
      guest = new SimulatedGuest(promotion.vm as SimulatedVm, promotion.txn, Math.max(1, parseCount('workload-ms', values['workload-ms'], 5)));
    }
    if (thenProtect !== undefined) {
      try {
        const protection = await runProtection(
          {
            vm: guard ?? promotion.vm,
            secondary: thenProtect,
            sessionId: values.session,
            verify: values.verify,
            heartbeat,
            ...(arbiter === undefined || promotion.lease === undefined ? {} : { arbiter, lease: promotion.lease, holder: promotion.lease.holder, leaseTtlMs }),
            signal,
          },
          reporter,
          statusEveryMs,
        );
        const primary = protection.primary;
        if (guard !== undefined) {
          primary.on('fault', (fault: Fault) => reporter.event('fault', { ...fault }, `${fault.severity} fault from ${fault.source}${fault.detail === undefined ? '' : `: ${fault.detail}`}`));
          const unwatch = guard.watch(primary);
          reprotected = guard;
          qemu?.standby.setSink((channel, data) => primary.tap.output(channel, data));
          stopWatching = unwatch;
        }
        guest?.attach(primary.tap);
        stopProtection = () => {
          protection.stopStatus();
          protection.primary.close();
        };
      } catch (error) {
        reporter.error(`re-protection failed: ${(error as Error).message}; the VM runs unprotected`, { code: (error as KemariError).code });
      }
    } else {
      const pid = qemu === undefined ? undefined : (promotion.vm as QemuVm).process?.pid;
      reporter.event('running', { txn: promotion.txn, ...(pid === undefined ? {} : { pid }) }, `the VM runs here now${pid === undefined ? '' : ` (QEMU pid ${pid})`}, unprotected (give --then-protect to protect it again)`);
    }
  }
  let why: string;
  if ('why' in first) why = first.why;
  else {
    const ended = await Promise.race([stopped.then((w) => ({ w })), ...(reprotected === undefined ? [] : [reprotected.standDown.then((outcome) => ({ outcome }))])]);
    if ('w' in ended) why = ended.w;
    else {
      why = 'stood-down';
      const outcome = ended.outcome;
      if ('stoodDown' in outcome) {
        reporter.event('stood-down', { txn: outcome.stoodDown.txn, reason: outcome.stoodDown.reason }, `the guest powered itself off (${outcome.stoodDown.reason}): protection ended at txn ${outcome.stoodDown.txn}; the next standby stood down`);
      } else {
        const error = outcome.error;
        reporter.error(`the guest powered itself off, but the next standby did not confirm the stand-down (${error instanceof Error ? error.message : String(error)}): whether it takes over is unknown`, {
          code: error instanceof KemariError ? error.code : undefined,
        });
      }
    }
  }
  stopping = true;
  stopWatching?.();
  stopProtection?.();
  guest?.stop();
  await secondary.close();
  await closeQemu(qemu);
  await arbiter?.close();
  reporter.event('stopped', { why }, `standby stopped (${why})`);
  return 0;
}

/** Stops the standby QEMU (or the promoted one), flushes the serial outside and removes the socket directory. */
async function closeQemu(qemu: { standby: CliQemuStandby; outside: SerialOutside; removeDir(): Promise<void> } | undefined): Promise<void> {
  if (qemu === undefined) return;
  await qemu.standby.close();
  await qemu.outside.close();
  await qemu.removeDir();
}
