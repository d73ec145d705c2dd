/** `kemari protect`: protects a VM by checkpointing it to a standby (`kemari standby`). */
import { parseArgs } from 'node:util';
import { KemariError } from '../errors.js';
import { arbiterFrom, parseCount, parseEndpoint, parseSync } from './args.js';
import { runProtection } from './protection.js';
import { Reporter } from './reporter.js';
import type { CliIo } from './reporter.js';
import { SimulatedGuest } from './simulated-guest.js';
import { untilStopped } from './until-stopped.js';

export const PROTECT_HELP = `usage: kemari protect --secondary HOST:PORT|/PATH --session ID [options]

Protects a VM: a full sync to the standby, then one ft-transaction per epoch; the VM's output is held until the
epoch that produced it is acked. Runs until interrupted (SIGINT/SIGTERM), then stops protecting (the VM runs on).

The VM:
  --simulated-mib N        the embedded simulated guest of N MiB (default 64), driven by a seeded workload
  --workload-ms MS         how often the simulated guest steps (default 5)
  --seed N                 the simulated guest's seed (default 1)

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
  --json                   events and status as JSON lines
  --status-ms MS           status line period (default 1000)
  --help                   this text
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
  const guest = SimulatedGuest.create(parseCount('simulated-mib', values['simulated-mib'], 64), parseCount('seed', values.seed, 1), Math.max(1, parseCount('workload-ms', values['workload-ms'], 5)));
  const arbiter = await arbiterFrom(values);
  reporter.event('starting', { secondary, sessionId: values.session, memoryBytes: guest.vm.memoryBytes }, `protecting a ${guest.vm.memoryBytes >> 20} MiB simulated guest to ${values.secondary}`);
  let protection;
  try {
    protection = await runProtection(
      {
        vm: guest.vm,
        secondary,
        sessionId: values.session,
        sync: parseSync(values.sync),
        pipelineDepth: Math.max(1, parseCount('pipeline', values.pipeline, 2)),
        verify: values.verify,
        heartbeat: { intervalMs: Math.max(1, parseCount('heartbeat-ms', values['heartbeat-ms'], 100)), missedMax: Math.max(1, parseCount('missed', values.missed, 5)) },
        ...(values['heartbeat-path'] === undefined ? {} : { heartbeatPath: parseEndpoint('heartbeat-path', values['heartbeat-path']) }),
        onSecondaryLoss: onLoss,
        reconnectDelayMs: parseCount('reconnect-ms', values['reconnect-ms'], 1000),
        ...(arbiter === undefined ? {} : { arbiter, leaseTtlMs: parseCount('lease-ttl-ms', values['lease-ttl-ms'], 3000) }),
        signal,
      },
      reporter,
      Math.max(50, parseCount('status-ms', values['status-ms'], 1000)),
    );
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
