/**
 * The `kemari` command line: `kemari protect`, `kemari standby`, `kemari witness`. Errors are printed with their
 * code and exit status 1; `--help` on any subcommand says everything it takes.
 */
import { isKemariError } from '../errors.js';
import { protectCommand, PROTECT_HELP } from './protect-command.js';
import type { CliIo } from './reporter.js';
import { standbyCommand, STANDBY_HELP } from './standby-command.js';
import { witnessCommand, WITNESS_HELP } from './witness-command.js';

export const MAIN_HELP = `usage: kemari <command> [options]

Fault-tolerant VMs by continuous transactional checkpointing to a standby host.

commands:
  protect    protect a VM by checkpointing it to a standby
  standby    keep the replica, and take over when the primary fails
  witness    run the lease witness (single writer) for automatic failover

Run 'kemari <command> --help' for a command's options.
`;

const COMMANDS: Record<string, (argv: string[], io: CliIo, signal: AbortSignal) => Promise<number>> = {
  protect: protectCommand,
  standby: standbyCommand,
  witness: witnessCommand,
};

/** Runs the command line `argv` (without node and the script); resolves with the exit status. */
export async function main(argv: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }, signal: AbortSignal = new AbortController().signal): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    io.stdout.write(MAIN_HELP);
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  if (command === undefined) {
    io.stderr.write(`kemari: unknown command ${JSON.stringify(name)}\n\n${MAIN_HELP}`);
    return 2;
  }
  try {
    return await command(rest, io, signal);
  } catch (error) {
    if (isKemariError(error)) io.stderr.write(`kemari ${name}: ${error.message} (${error.code})\n`);
    else if (error instanceof Error && 'code' in error && String((error as { code: unknown }).code).startsWith('ERR_PARSE_ARGS')) {
      io.stderr.write(`kemari ${name}: ${error.message}\n\n${{ protect: PROTECT_HELP, standby: STANDBY_HELP, witness: WITNESS_HELP }[name]}`);
      return 2;
    } else io.stderr.write(`kemari ${name}: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    return 1;
  }
}
