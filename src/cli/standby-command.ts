/**
 * `kemari standby`: keeps the replica of a protected VM and takes over when the primary fails (a FAILOVER from a
 * quiesced primary, or, with an arbiter, a silent primary whose lease it could take). After taking over it runs
 * the VM from the last committed epoch, replays the outputs the primary may not have released, and, with
 * `--then-protect`, protects it to a new standby at once.
 */
import { parseArgs } from 'node:util';
import { KemariError } from '../errors.js';
import { Secondary } from '../secondary/secondary.js';
import type { Promotion, SecondaryCommit } from '../secondary/secondary.js';
import { arbiterFrom, parseCount, parseEndpoint } from './args.js';
import { runProtection } from './protection.js';
import { Reporter } from './reporter.js';
import type { CliIo } from './reporter.js';
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
  const arbiter = await arbiterFrom(values);
  const heartbeatListen = values['heartbeat-listen'] === undefined ? undefined : parseEndpoint('heartbeat-listen', values['heartbeat-listen']);
  const secondary = await Secondary.listen({
    ...listenAt,
    sessionId: values.session,
    verify: values.verify,
    heartbeat,
    ...(values.journal === undefined ? {} : { journalDir: values.journal }),
    ...(heartbeatListen === undefined ? {} : { heartbeatPath: heartbeatListen }),
    ...(arbiter === undefined ? {} : { arbiter, leaseTtlMs, holder: `standby:${process.pid}` }),
  });
  reporter.event(
    'listening',
    { listen: listenAt, port: secondary.port, committedTxn: secondary.committedTxn },
    `standby listening on ${'path' in listenAt ? listenAt.path : `${listenAt.host}:${secondary.port}`}${secondary.committedTxn > 0 ? ` (journal recovered txn ${secondary.committedTxn})` : ''}`,
  );
  let commits = 0;
  secondary.on('session', () => reporter.event('session', { sessionId: values.session }, `primary connected (session ${values.session})`));
  secondary.on('commit', (c: SecondaryCommit) => {
    commits += 1;
    if (c.full) reporter.event('full-sync', { txn: c.txn, bytes: c.bytes }, `full sync committed (txn ${c.txn}, ${(c.bytes / (1 << 20)).toFixed(1)} MiB)`);
  });
  secondary.on('primaryLost', (e: KemariError) => reporter.event('primary-lost', { message: e.message }, `primary lost: ${e.message}`));
  secondary.on('linkDown', (e: KemariError) => reporter.event('link-down', { message: e.message }, `replication link down: ${e.message}`));
  const timer = setInterval(() => {
    const s = secondary.stats();
    reporter.status(`${s.state} committed txn ${s.committedTxn} | ${commits} epochs | ${(s.bytesApplied / (1 << 20)).toFixed(1)} MiB applied`, { state: s.state, committedTxn: s.committedTxn, epochs: s.epochs, bytesApplied: s.bytesApplied });
  }, statusEveryMs);
  timer.unref();

  let guest: SimulatedGuest | undefined;
  let stopProtection: (() => void) | undefined;
  const promoted = new Promise<Promotion>((resolve) => secondary.once('promoted', resolve));
  const stopped = untilStopped(signal);
  const first = await Promise.race([promoted.then((p) => ({ p })), stopped.then((why) => ({ why }))]);
  clearInterval(timer);
  if ('p' in first) {
    const promotion = first.p;
    reporter.event(
      'promoted',
      { txn: promotion.txn, replay: promotion.replay.length, generation: promotion.lease?.generation },
      `took over at txn ${promotion.txn}; replaying ${promotion.replay.length} outputs the primary may not have released`,
    );
    guest = new SimulatedGuest(promotion.vm, promotion.txn, Math.max(1, parseCount('workload-ms', values['workload-ms'], 5)));
    if (thenProtect !== undefined) {
      try {
        const protection = await runProtection(
          {
            vm: promotion.vm,
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
        guest.attach(protection.primary.tap);
        stopProtection = () => {
          protection.stopStatus();
          protection.primary.close();
        };
      } catch (error) {
        reporter.error(`re-protection failed: ${(error as Error).message}; the VM runs unprotected`, { code: (error as KemariError).code });
      }
    } else {
      reporter.event('running', { txn: promotion.txn }, 'the VM runs here now, unprotected (give --then-protect to protect it again)');
    }
  }
  const why = 'why' in first ? first.why : await stopped;
  stopProtection?.();
  guest?.stop();
  await secondary.close();
  await arbiter?.close();
  reporter.event('stopped', { why }, `standby stopped (${why})`);
  return 0;
}
