/**
 * A throwaway PKI made with the openssl CLI: a CA, a server certificate for 127.0.0.1/localhost, a client
 * certificate, and a rogue client certificate signed by a second CA. For mutual-TLS tests.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TlsCredentials } from '../../src/transport/index.js';

export interface TestPki {
  credentials(name: 'server' | 'client' | 'rogue', ca?: 'ca' | 'rogue-ca'): TlsCredentials;
  pem: Record<string, string>;
  cleanup(): void;
}

export function makeTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'kemari-pki-'));
  const openssl = (...args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const makeCa = (name: string): void =>
    openssl(
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${name}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    );
  const makeLeaf = (name: string, ca: string, commonName: string, extensions: string): void => {
    openssl(
      'req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${commonName}`,
    );
    writeFileSync(join(dir, `${name}.ext`), extensions);
    openssl(
      'x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial',
      '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`,
    );
  };
  makeCa('ca');
  makeCa('rogue-ca');
  makeLeaf('server', 'ca', '127.0.0.1', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  makeLeaf('client', 'ca', 'kemari-primary', 'extendedKeyUsage=clientAuth\n');
  makeLeaf('rogue', 'rogue-ca', 'kemari-primary', 'extendedKeyUsage=clientAuth\n');
  const pem: Record<string, string> = {};
  for (const name of ['ca', 'rogue-ca', 'server', 'client', 'rogue']) {
    pem[`${name}.crt`] = readFileSync(join(dir, `${name}.crt`), 'utf8');
    if (name !== 'ca' && name !== 'rogue-ca') pem[`${name}.key`] = readFileSync(join(dir, `${name}.key`), 'utf8');
  }
  rmSync(dir, { recursive: true, force: true });
  return {
    pem,
    credentials: (name, ca = 'ca') => ({ ca: pem[`${ca}.crt`]!, cert: pem[`${name}.crt`]!, key: pem[`${name}.key`]! }),
    cleanup: () => {},
  };
}
