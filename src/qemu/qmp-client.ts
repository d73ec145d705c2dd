/**
 * A QMP client over a unix socket: the thin I/O driver around {@link QmpCore}.
 *
 * Hand-written rather than taken from npm: the one QMP package there (`qemu-qmp`, 0.5.0) is CommonJS without types,
 * timeouts, id matching or typed errors. This driver owns the socket, the per-command timers and the promises;
 * everything about the protocol is in the core.
 *
 * Failure contract, which callers rely on:
 * - a QMP error reply rejects that command with KEMARI_QMP_ERROR (`details.class`, `details.desc`, `details.command`);
 * - a command without reply within its timeout rejects with KEMARI_TIMEOUT;
 * - when the socket closes (QEMU exited, was killed, or closed QMP) every pending command and every
 *   {@link QmpClient.waitForEvent} rejects with KEMARI_QEMU_EXITED, and later calls reject at once.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { KemariError } from '../errors.js';
import { QmpCore } from './qmp-core.js';
import type { QmpAction, QmpEvent, QmpGreeting } from './qmp-core.js';
import { QMP_LINE_BYTES_MAX_DEFAULT, QmpLineSplitter } from './qmp-line-splitter.js';

export type { QmpEvent, QmpGreeting } from './qmp-core.js';

/** Default time a command may take before it fails with KEMARI_TIMEOUT. */
export const QMP_COMMAND_TIMEOUT_MS_DEFAULT = 10_000;

/** Options of {@link QmpClient.connect}. */
export interface QmpConnectOptions {
  /** Time allowed for connect, greeting and `qmp_capabilities` together. Default 5000 ms. */
  connectTimeoutMs?: number;
  /** Default timeout of {@link QmpClient.execute}. Default {@link QMP_COMMAND_TIMEOUT_MS_DEFAULT}. */
  commandTimeoutMs?: number;
  /** Longest QMP line accepted. Default {@link QMP_LINE_BYTES_MAX_DEFAULT}. */
  lineBytesMax?: number;
}

/** Options of one {@link QmpClient.execute} call. */
export interface QmpExecuteOptions {
  /** Overrides the client's command timeout for this call. */
  timeoutMs?: number;
}

/** Events of {@link QmpClient}: `event` for each QMP event, `close` once with the reason. */
export interface QmpClientEvents {
  event: [QmpEvent];
  close: [KemariError];
}

interface Waiter {
  resolve: (value: unknown) => void;
  reject: (error: KemariError) => void;
  timer: NodeJS.Timeout;
}

/** A connected, negotiated QMP session. Create it with {@link QmpClient.connect}. */
export class QmpClient extends EventEmitter<QmpClientEvents> {
  private readonly core = new QmpCore();
  private readonly splitter: QmpLineSplitter;
  private readonly waiters = new Map<string, Waiter>();
  private closeReason: KemariError | undefined;
  private greetingValue: QmpGreeting | undefined;
  private readonly greeted: Promise<QmpGreeting>;
  private resolveGreeted!: (greeting: QmpGreeting) => void;
  private rejectGreeted!: (error: KemariError) => void;
  /** Resolves with the reason once the session is closed; never rejects. */
  readonly closed: Promise<KemariError>;
  private resolveClosed!: (reason: KemariError) => void;

  private constructor(
    private readonly socket: net.Socket,
    private readonly commandTimeoutMs: number,
    lineBytesMax: number,
  ) {
    super();
    // Each waitForEvent adds listeners until it settles (bounded by its timeout); many may wait at once.
    this.setMaxListeners(0);
    this.splitter = new QmpLineSplitter(lineBytesMax);
    this.greeted = new Promise((resolve, reject) => {
      this.resolveGreeted = resolve;
      this.rejectGreeted = reject;
    });
    this.greeted.catch(() => {});
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (cause) => this.fail(exited(`QMP socket error: ${cause.message}`, { cause })));
    socket.on('close', () => this.fail(exited('QMP socket closed')));
  }

  /**
   * Connects to QEMU's QMP unix socket at `path`, waits for the greeting and leaves capability negotiation. Rejects
   * with KEMARI_CONNECT_FAILED if nothing accepts at `path`, KEMARI_QEMU_EXITED if the socket closes during the
   * handshake and KEMARI_TIMEOUT after `connectTimeoutMs`.
   */
  static async connect(path: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const connectTimeoutMs = options.connectTimeoutMs ?? 5000;
    const socket = await openSocket(path);
    const client = new QmpClient(socket, options.commandTimeoutMs ?? QMP_COMMAND_TIMEOUT_MS_DEFAULT, options.lineBytesMax ?? QMP_LINE_BYTES_MAX_DEFAULT);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new KemariError('KEMARI_TIMEOUT', `QMP handshake on ${path} took over ${connectTimeoutMs} ms`, { details: { path, timeoutMs: connectTimeoutMs } })),
        connectTimeoutMs,
      );
    });
    try {
      await Promise.race([client.greeted, deadline]);
      await Promise.race([client.execute('qmp_capabilities', undefined, { timeoutMs: connectTimeoutMs }), deadline]);
      return client;
    } catch (error) {
      client.close();
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** QEMU's greeting (version and offered capabilities). */
  get greeting(): QmpGreeting {
    if (this.greetingValue === undefined) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'no QMP greeting yet');
    return this.greetingValue;
  }

  /** True once the session closed (for any reason); every call then fails with the close reason. */
  get isClosed(): boolean {
    return this.closeReason !== undefined;
  }

  /**
   * Runs a QMP command and resolves with its `return` value. Rejects with KEMARI_QMP_ERROR on an error reply,
   * KEMARI_TIMEOUT after `timeoutMs` and KEMARI_QEMU_EXITED if the session closes first.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: QmpExecuteOptions = {}): Promise<T> {
    if (this.closeReason !== undefined) return Promise.reject(this.closeReason);
    const timeoutMs = options.timeoutMs ?? this.commandTimeoutMs;
    let sent: { id: string; line: string };
    try {
      sent = this.core.command(command, args);
    } catch (error) {
      return Promise.reject(error);
    }
    const { id, line } = sent;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        const action = this.core.expire(id, timeoutMs);
        if (action !== undefined) this.apply(action);
      }, timeoutMs);
      this.waiters.set(id, { resolve: resolve as (value: unknown) => void, reject, timer });
      this.socket.write(line);
    });
  }

  /**
   * Resolves with the next event named `name` that satisfies `predicate`, received after this call. Rejects with
   * KEMARI_TIMEOUT after `timeoutMs` and KEMARI_QEMU_EXITED if the session closes first.
   *
   * QEMU often sends an event before the reply of the command that caused it (STOP before `stop` returns), so call
   * this before `execute` and await it after: `const stopped = qmp.waitForEvent('STOP'); await qmp.execute('stop');
   * await stopped;`.
   */
  waitForEvent(name: string, predicate: (event: QmpEvent) => boolean = () => true, timeoutMs = this.commandTimeoutMs): Promise<QmpEvent> {
    if (this.closeReason !== undefined) return Promise.reject(this.closeReason);
    return new Promise<QmpEvent>((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      const onEvent = (event: QmpEvent): void => {
        if (event.event !== name) return;
        let matches: boolean;
        try {
          matches = predicate(event);
        } catch (error) {
          cleanup();
          reject(error);
          return;
        }
        if (!matches) return;
        cleanup();
        resolve(event);
      };
      const onClose = (reason: KemariError): void => {
        cleanup();
        reject(reason);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new KemariError('KEMARI_TIMEOUT', `no QMP event ${name} within ${timeoutMs} ms`, { details: { event: name, timeoutMs } }));
      }, timeoutMs);
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  /**
   * Closes the session from our side; pending commands reject with `reason` (KEMARI_QEMU_EXITED by default, which is
   * also what a process wrapper passes when it saw QEMU exit, with the exit code in details).
   */
  close(reason: KemariError = exited('QMP client closed')): void {
    this.fail(reason);
  }

  private onData(chunk: Buffer): void {
    if (this.closeReason !== undefined) return;
    try {
      for (const line of this.splitter.push(chunk)) {
        for (const action of this.core.receive(line)) this.apply(action);
        if (this.closeReason !== undefined) return;
      }
    } catch (error) {
      this.fail(error instanceof KemariError ? error : new KemariError('KEMARI_QMP_ERROR', String(error), { cause: error }));
    }
  }

  private apply(action: QmpAction): void {
    switch (action.type) {
      case 'greeting':
        this.greetingValue = action.greeting;
        this.resolveGreeted(action.greeting);
        return;
      case 'event':
        this.emit('event', action.event);
        return;
      case 'unmatched':
        return;
      case 'resolve':
      case 'reject': {
        const waiter = this.waiters.get(action.id);
        if (waiter === undefined) return;
        this.waiters.delete(action.id);
        clearTimeout(waiter.timer);
        if (action.type === 'resolve') waiter.resolve(action.value);
        else waiter.reject(action.error);
        return;
      }
    }
  }

  private fail(reason: KemariError): void {
    if (this.closeReason !== undefined) return;
    this.closeReason = reason;
    for (const action of this.core.close(reason)) this.apply(action);
    this.rejectGreeted(reason);
    this.socket.destroy();
    this.emit('close', reason);
    this.resolveClosed(reason);
  }
}

function exited(message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}): KemariError {
  return new KemariError('KEMARI_QEMU_EXITED', message, options);
}

function openSocket(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path });
    const onError = (cause: NodeJS.ErrnoException): void => {
      socket.destroy();
      reject(new KemariError('KEMARI_CONNECT_FAILED', `cannot connect to QMP socket ${path}: ${cause.message}`, { cause, details: { path, errno: cause.code } }));
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.off('error', onError);
      resolve(socket);
    });
  });
}
