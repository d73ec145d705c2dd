import { afterEach, describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { captureCliIo, waitFor } from '../helpers/cli-io.js';

const aborts: AbortController[] = [];
const runs: Array<Promise<number>> = [];
afterEach(async () => {
  for (const a of aborts.splice(0)) a.abort();
  await Promise.allSettled(runs.splice(0));
});

function start(argv: string[]) {
  const io = captureCliIo();
  const abort = new AbortController();
  aborts.push(abort);
  const done = main(argv, io, abort.signal);
  runs.push(done);
  return { io, abort, done };
}

describe('kemari (command line)', () => {
  it('says what every command takes, and refuses what it does not know', async () => {
    for (const command of ['protect', 'standby', 'witness']) {
      const io = captureCliIo();
      expect(await main([command, '--help'], io)).toBe(0);
      expect(io.out.join('')).toContain(`usage: kemari ${command}`);
    }
    const none = captureCliIo();
    expect(await main([], none)).toBe(2);
    expect(none.out.join('')).toContain('commands:');
    const unknown = captureCliIo();
    expect(await main(['frobnicate'], unknown)).toBe(2);
    const badFlag = captureCliIo();
    expect(await main(['witness', '--no-such-flag'], badFlag)).toBe(2);
    expect(badFlag.err.join('')).toContain('no-such-flag');
    const badEndpoint = captureCliIo();
    expect(await main(['protect', '--secondary', 'nowhere', '--session', 's'], badEndpoint)).toBe(1);
    expect(badEndpoint.err.join('')).toContain('KEMARI_INVALID_ARGUMENT');
  });

  it('witness, standby and protect: protected, then a handover under the lease and re-protection to a new standby', async () => {
    const witness = start(['witness', '--port', '0', '--json']);
    const witnessPort = (await waitFor(() => witness.io.events().find((e) => e.event === 'listening'), 'the witness')).port as number;
    const common = ['--session', 'cli-vm', '--witness', `127.0.0.1:${witnessPort}`, '--lease-ttl-ms', '600', '--heartbeat-ms', '20', '--json', '--status-ms', '100'];
    const standby2 = start(['standby', '--listen', '127.0.0.1:0', ...common]);
    const port2 = (await waitFor(() => standby2.io.events().find((e) => e.event === 'listening'), 'standby 2')).port as number;
    const standby1 = start(['standby', '--listen', '127.0.0.1:0', '--then-protect', `127.0.0.1:${port2}`, ...common]);
    const port1 = (await waitFor(() => standby1.io.events().find((e) => e.event === 'listening'), 'standby 1')).port as number;
    const protect = start(['protect', '--secondary', `127.0.0.1:${port1}`, '--simulated-mib', '4', '--verify', ...common]);
    await waitFor(() => protect.io.events().find((e) => e.event === 'protected'), 'protection');
    const status = await waitFor(() => protect.io.events().find((e) => e.event === 'status' && (e.ackedTxn as number) > 3), 'epochs');
    expect(status.state).toBe('protected');
    // Stopping the primary gives its lease back: the standby takes over and protects the VM to standby 2.
    protect.abort.abort();
    expect(await protect.done).toBe(0);
    const promoted = await waitFor(() => standby1.io.events().find((e) => e.event === 'promoted'), 'the takeover');
    expect(promoted.txn as number).toBeGreaterThan(3);
    await waitFor(() => standby1.io.events().find((e) => e.event === 'protected'), 're-protection');
    await waitFor(() => standby2.io.events().find((e) => e.event === 'full-sync'), 'the new standby’s full sync');
    expect(protect.io.err.join('')).toBe('');
    expect(standby1.io.err.join('')).toBe('');
  });
});
