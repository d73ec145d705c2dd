/**
 * The witness: a small third process that arbitrates the lease of each replication session (`kemari witness`).
 *
 * Protocol: newline-delimited JSON over TCP, one request per line, at most 4 KiB a line:
 *   { "id": 1, "op": "acquire", "sessionId": "vm-1", "holder": "primary", "ttlMs": 3000 }
 *   { "id": 2, "op": "renew",   "sessionId": "vm-1", "holder": "primary", "generation": 4, "ttlMs": 3000 }
 *   { "id": 3, "op": "release", "sessionId": "vm-1", "holder": "primary", "generation": 4, "ttlMs": 3000 }
 * and one reply per request: { "id": 1, "ok": true, "lease": { ... } | null } or { "id": 1, "ok": false, "code",
 * "message" }. Every change of the lease table is written to `stateFile` (temp file, fsync, rename) before the
 * reply leaves, so a restarted witness never grants a generation twice. Its clock is its own monotonic clock:
 * leases are judged by the witness's time only, never by the clients'.
 */
import { open, readFile, rename } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { KemariError } from '../errors.js';
import type { Lease } from './arbiter.js';
import { LineReader } from './line-reader.js';
import { DEFAULT_WITNESS_LIMITS, WitnessCore } from './witness-core.js';
import type { LeaseRecord, WitnessLimits } from './witness-core.js';

/** Longest request line. */
export const WITNESS_LINE_BYTES_MAX = 4096;

/** Options of {@link WitnessServer.listen}. */
export interface WitnessServerOptions {
  host?: string;
  port?: number;
  /** Where the lease table persists. Without it the witness forgets generations on restart (tests only). */
  stateFile?: string;
  limits?: WitnessLimits;
  /** The witness's clock in milliseconds. Default `performance.now` (monotonic). */
  clock?: () => number;
  /** Most client connections at once. Default 256. */
  connectionsMax?: number;
}

interface Request {
  id: number;
  op: 'acquire' | 'renew' | 'release';
  sessionId: string;
  holder: string;
  generation?: number;
  ttlMs: number;
}

export class WitnessServer {
  private readonly sockets = new Set<Socket>();
  private queue: Promise<void> = Promise.resolve();

  private constructor(
    private readonly server: Server,
    private readonly core: WitnessCore,
    private readonly options: WitnessServerOptions,
    private readonly clock: () => number,
  ) {}

  /** Starts a witness; loads the lease table from `stateFile` when it exists. */
  static async listen(options: WitnessServerOptions = {}): Promise<WitnessServer> {
    const limits = options.limits ?? DEFAULT_WITNESS_LIMITS;
    let initial: Array<[string, LeaseRecord]> = [];
    if (options.stateFile !== undefined) {
      try {
        const saved = JSON.parse(await readFile(options.stateFile, 'utf8')) as { leases: Array<[string, LeaseRecord]> };
        // Lease times do not survive a restart (they were another clock's): every lease counts as expired, only the
        // generations matter, which is the safe side: nobody keeps writing past a witness restart without renewing.
        initial = saved.leases.map(([id, r]) => [id, { ...r, expiresAtMs: Number.NEGATIVE_INFINITY }]);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
          throw new KemariError('KEMARI_JOURNAL_IO', `cannot read the witness state ${options.stateFile}`, { cause: error });
        }
      }
    }
    const core = new WitnessCore(limits, initial);
    const server = createServer();
    const witness = new WitnessServer(server, core, options, options.clock ?? (() => performance.now()));
    server.maxConnections = options.connectionsMax ?? 256;
    server.on('connection', (socket) => witness.serve(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error) => reject(new KemariError('KEMARI_LISTEN_FAILED', `the witness cannot listen: ${error.message}`, { cause: error })));
      server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => resolve());
    });
    return witness;
  }

  /** The port listened on. */
  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Stops listening and drops every client. */
  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
    await this.queue;
  }

  private serve(socket: Socket): void {
    this.sockets.add(socket);
    const reader = new LineReader(WITNESS_LINE_BYTES_MAX);
    socket.setNoDelay(true);
    socket.on('error', () => {});
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('data', (chunk: Buffer) => {
      let lines: string[];
      try {
        lines = reader.push(chunk);
      } catch {
        socket.destroy();
        return;
      }
      for (const line of lines) {
        // Requests are handled one at a time, across all clients, so each sees the table the previous one left.
        this.queue = this.queue.then(() => this.handle(socket, line));
      }
    });
  }

  private async handle(socket: Socket, line: string): Promise<void> {
    let id: unknown = null;
    let reply: unknown;
    try {
      const request = parseRequest(line);
      id = request.id;
      const grantsBefore = this.core.grantCount;
      const nowMs = this.clock();
      let lease: Lease | undefined;
      const asLease: Lease = { sessionId: request.sessionId, holder: request.holder, generation: request.generation ?? 0, ttlMs: request.ttlMs };
      if (request.op === 'acquire') lease = this.core.acquire(request.sessionId, request.holder, request.ttlMs, nowMs);
      else if (request.op === 'renew') lease = this.core.renew(asLease, nowMs);
      else this.core.release(asLease, nowMs);
      // A new generation is on disk before anyone hears of it.
      if (this.options.stateFile !== undefined && this.core.grantCount !== grantsBefore) await this.persist(this.options.stateFile);
      reply = { id, ok: true, lease: lease ?? null };
    } catch (error) {
      const e = error instanceof KemariError ? error : new KemariError('KEMARI_BAD_BODY', 'malformed witness request', { cause: error });
      reply = { id, ok: false, code: e.code, message: e.message };
    }
    if (!socket.destroyed) socket.write(JSON.stringify(reply) + '\n');
  }

  private async persist(path: string): Promise<void> {
    const temp = `${path}.tmp`;
    const file = await open(temp, 'w');
    try {
      await file.writeFile(JSON.stringify({ leases: this.core.snapshot() }));
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temp, path);
  }
}

function parseRequest(line: string): Request {
  const value = JSON.parse(line) as Record<string, unknown>;
  const bad = (message: string): never => {
    throw new KemariError('KEMARI_BAD_BODY', `witness request: ${message}`);
  };
  if (typeof value !== 'object' || value === null) bad('not an object');
  if (!Number.isSafeInteger(value.id)) bad('id must be an integer');
  if (value.op !== 'acquire' && value.op !== 'renew' && value.op !== 'release') bad('op must be acquire, renew or release');
  if (typeof value.sessionId !== 'string' || typeof value.holder !== 'string') bad('sessionId and holder must be strings');
  if (!Number.isSafeInteger(value.ttlMs)) bad('ttlMs must be an integer');
  if (value.op !== 'acquire' && !Number.isSafeInteger(value.generation)) bad('generation must be an integer');
  return value as unknown as Request;
}
