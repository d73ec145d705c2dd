/**
 * The QEMU machine of the `kemari` CLI, built the same way by `kemari protect` and `kemari standby`: a standby
 * QEMU must have exactly the primary's machine (type, memory, devices, RAM block layout), or it refuses the restore
 * stream. Both commands take the same flags (`--qemu-mib`, `--qemu-machine`, `--qemu-arg`) and build the argument
 * list here; both add one serial port on a kemari tap, so the device lists agree too.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { KemariError } from '../errors.js';
import { parseCount } from './args.js';

/** Guest memory of a CLI QEMU unless `--qemu-mib` says otherwise (the kemari test guest's size). */
export const QEMU_MIB_DEFAULT = 32;
/** The `-machine` value unless `--qemu-machine` says otherwise: the legacy-IDE pc machine under TCG. */
export const QEMU_MACHINE_DEFAULT = 'pc,accel=tcg';

/** The QEMU flags shared by `protect` and `standby`, as parseArgs returns them. */
export interface QemuFlagValues {
  'qemu-mib'?: string | undefined;
  'qemu-machine'?: string | undefined;
  'qemu-arg'?: string[] | undefined;
}

/** parseArgs option specs of the shared QEMU flags. */
export const QEMU_FLAG_OPTIONS = {
  'qemu-mib': { type: 'string' },
  'qemu-machine': { type: 'string' },
  'qemu-arg': { type: 'string', multiple: true },
  'qemu-dir': { type: 'string' },
  'serial-out': { type: 'string' },
} as const;

/** The help lines of the shared flags. */
export const QEMU_FLAGS_HELP = `  --qemu-mib N             guest memory in MiB (default ${QEMU_MIB_DEFAULT}); primary and standby must agree
  --qemu-machine SPEC      the -machine value (default ${QEMU_MACHINE_DEFAULT}); primary and standby must agree
  --qemu-arg ARG           one more QEMU argument, appended (repeat it; write --qemu-arg=-drive for one that
                           starts with a dash); give the standby the same ones
  --qemu-dir DIR           where the QMP, NBD, migration and serial sockets live (default: a new temporary
                           directory, removed on exit; keep it short, socket paths have 108 bytes)
  --serial-out FILE        append the guest's released serial output to FILE instead of stdout (with --json,
                           stdout gets one 'serial' event per line)`;

/**
 * The machine arguments (without drives, serial, `-qmp` or `-incoming`): `-machine SPEC -m N -nodefaults
 * -display none` plus the `--qemu-arg`s. KEMARI_INVALID_ARGUMENT for a memory size of 0.
 */
export function qemuMachineArgs(values: QemuFlagValues): string[] {
  const mib = parseCount('qemu-mib', values['qemu-mib'], QEMU_MIB_DEFAULT);
  if (mib < 1) throw new KemariError('KEMARI_INVALID_ARGUMENT', '--qemu-mib must be at least 1');
  const machine = values['qemu-machine'] ?? QEMU_MACHINE_DEFAULT;
  return ['-machine', machine, '-m', String(mib), '-nodefaults', '-display', 'none', ...(values['qemu-arg'] ?? [])];
}

/** A directory for sockets: the one given (absolute, kept), or a new temporary one (removed by `remove`). */
export async function socketDir(given: string | undefined): Promise<{ path: string; remove(): Promise<void> }> {
  if (given !== undefined) {
    if (!isAbsolute(given)) throw new KemariError('KEMARI_INVALID_ARGUMENT', '--qemu-dir must be an absolute path (QEMU resolves paths against its own cwd)');
    return { path: given, remove: async () => {} };
  }
  const path = await mkdtemp(join(tmpdir(), 'kemari-'));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}
