/** `kemari witness`: runs the lease witness, the third process that decides who may write (single writer). */
import { parseArgs } from 'node:util';
import { WitnessServer } from '../failover/witness-server.js';
import { parseCount } from './args.js';
import { Reporter } from './reporter.js';
import type { CliIo } from './reporter.js';
import { untilStopped } from './until-stopped.js';

export const WITNESS_HELP = `usage: kemari witness [--host HOST] [--port PORT] [--state-file FILE] [--json]

Runs the witness: grants each session's lease to one holder at a time, with generation numbers that only grow
(persisted to --state-file before every grant, so a restarted witness never grants a generation twice).

  --host HOST          address to listen on (default 127.0.0.1)
  --port PORT          TCP port (default 7400; 0 picks a free one)
  --state-file FILE    where generations are kept (strongly advised)
  --json               log events as JSON lines
`;

/** Runs until stopped; resolves with the exit code. */
export async function witnessCommand(argv: string[], io: CliIo, signal: AbortSignal): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { host: { type: 'string' }, port: { type: 'string' }, 'state-file': { type: 'string' }, json: { type: 'boolean', default: false }, help: { type: 'boolean', default: false } },
    strict: true,
  });
  if (values.help) {
    io.stdout.write(WITNESS_HELP);
    return 0;
  }
  const reporter = new Reporter(io, values.json);
  const host = values.host ?? '127.0.0.1';
  const witness = await WitnessServer.listen({
    host,
    port: parseCount('port', values.port, 7400),
    ...(values['state-file'] === undefined ? {} : { stateFile: values['state-file'] }),
  });
  reporter.event('listening', { host, port: witness.port }, `witness listening on ${host}:${witness.port}`);
  const why = await untilStopped(signal);
  await witness.close();
  reporter.event('stopped', { why }, `witness stopped (${why})`);
  return 0;
}
