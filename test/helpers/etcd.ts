/**
 * Starts a real etcd (Debian's etcd-server) on loopback ports in a temp dir, for arbiter tests. Fails loudly when
 * the binary is missing: these tests are never skipped (CI installs etcd-server).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  await new Promise((r) => server.close(r));
  return port;
}

export async function startEtcd(): Promise<{ hosts: string[]; stop(): Promise<void> }> {
  if (spawnSync('etcd', ['--version']).status !== 0) {
    throw new Error('etcd is not installed: apt-get install etcd-server (the arbiter tests need a real etcd)');
  }
  const dir = mkdtempSync(join(tmpdir(), 'kemari-etcd-'));
  const clientPort = await freePort();
  const peerPort = await freePort();
  const client = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const child = spawn(
    'etcd',
    [
      '--name', 'kemari-test', '--data-dir', join(dir, 'data'),
      '--listen-client-urls', client, '--advertise-client-urls', client,
      '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer,
      '--initial-cluster', `kemari-test=${peer}`, '--log-level', 'error', '--logger', 'zap',
    ],
    { stdio: 'ignore' },
  );
  const hosts = [`127.0.0.1:${clientPort}`];
  const probe = new Etcd3({ hosts, dialTimeout: 500 });
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      await probe.get('kemari-probe').exec();
      break;
    } catch (error) {
      if (Date.now() > deadline || child.exitCode !== null) {
        child.kill('SIGKILL');
        throw new Error(`etcd did not start: ${(error as Error).message}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  probe.close();
  return {
    hosts,
    async stop() {
      child.kill('SIGKILL');
      await new Promise((r) => (child.exitCode !== null ? r(undefined) : child.once('exit', r)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
