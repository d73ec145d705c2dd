/**
 * The QMP protocol logic without I/O: it turns commands into lines to send and received lines into actions
 * (resolve or reject a pending command, deliver an event, note the greeting). Sockets and timers live in the thin
 * driver {@link QmpClient}; this core is deterministic and tested without QEMU.
 *
 * QMP in one paragraph: QEMU greets with `{"QMP": {...}}`; the client sends `{"execute": "qmp_capabilities"}` to
 * leave capability negotiation; then each `{"execute", "arguments", "id"}` gets exactly one `{"return", "id"}` or
 * `{"error": {"class", "desc"}, "id"}`, and asynchronous `{"event", "data", "timestamp"}` lines may arrive at any
 * time, also between a command and its reply. We always send an `id`, so replies are matched by id, never by order.
 */
import { KemariError } from '../errors.js';

/** What QEMU says about itself in its greeting; kept for logs and version checks. */
export interface QmpGreeting {
  /** `{ qemu: { major, minor, micro }, package }` as QEMU sent it. */
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  /** Optional protocol capabilities QEMU offers (e.g. `oob`); we enable none. */
  capabilities: string[];
}

/** An asynchronous QMP event such as STOP, RESUME, SHUTDOWN or MIGRATION. */
export interface QmpEvent {
  /** Event name, e.g. `STOP`. */
  event: string;
  /** Event payload; `{}` when QEMU sent none. */
  data: Record<string, unknown>;
  /** QEMU's wall-clock time of the event. */
  timestamp: { seconds: number; microseconds: number };
}

/**
 * What the driver must do after a line was received or the connection closed. Actions, not callbacks, so the core
 * stays free of promises and the order of effects is explicit.
 */
export type QmpAction =
  | { type: 'greeting'; greeting: QmpGreeting }
  | { type: 'resolve'; id: string; command: string; value: unknown }
  | { type: 'reject'; id: string; command: string; error: KemariError }
  | { type: 'event'; event: QmpEvent }
  /** A reply whose id matches no pending command (it timed out already, or QEMU could not parse a request). */
  | { type: 'unmatched'; message: Record<string, unknown> };

/** Where the core is in the QMP session. */
export type QmpCoreState = 'awaiting-greeting' | 'greeted' | 'closed';

/** A command that was sent and awaits its reply. */
interface PendingCommand {
  command: string;
}

/** Sans-I/O QMP state: pending commands by id, greeting state, message classification. */
export class QmpCore {
  private readonly pending = new Map<string, PendingCommand>();
  private nextId = 1;
  private current: QmpCoreState = 'awaiting-greeting';

  /** @param idPrefix Prefix of the ids we send, so our replies are recognisable in QEMU's logs. */
  constructor(private readonly idPrefix = 'kemari-') {}

  /** The session state: commands may be sent in any state but `closed`. */
  get state(): QmpCoreState {
    return this.current;
  }

  /** Commands sent and not yet answered, timed out or failed. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /**
   * Registers a command and returns its id and the line to send (with its `\n`). Throws KEMARI_QEMU_EXITED once
   * closed and KEMARI_INVALID_ARGUMENT for an empty command name or arguments that are not a JSON object.
   */
  command(command: string, args?: Record<string, unknown>): { id: string; line: string } {
    if (this.current === 'closed') {
      throw new KemariError('KEMARI_QEMU_EXITED', `QMP connection is closed; cannot send ${command}`, { details: { command } });
    }
    if (typeof command !== 'string' || command.length === 0) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'a QMP command name must be a non-empty string', { details: { command } });
    }
    if (args !== undefined && (args === null || typeof args !== 'object' || Array.isArray(args))) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'QMP arguments must be a JSON object', { details: { command } });
    }
    const id = `${this.idPrefix}${this.nextId++}`;
    const message: Record<string, unknown> = { execute: command, id };
    if (args !== undefined) message['arguments'] = args;
    const line = `${JSON.stringify(message)}\n`;
    this.pending.set(id, { command });
    return { id, line };
  }

  /**
   * Interprets one received line. Throws KEMARI_QMP_ERROR (reason `malformed`) when the line is not a JSON object of
   * a known shape: the session cannot be trusted after that and the driver closes it.
   */
  receive(line: string): QmpAction[] {
    if (this.current === 'closed') return [];
    if (line.trim().length === 0) return [];
    let message: unknown;
    try {
      message = JSON.parse(line);
    } catch (cause) {
      throw malformed('a QMP line is not JSON', line, cause);
    }
    if (message === null || typeof message !== 'object' || Array.isArray(message)) throw malformed('a QMP line is not a JSON object', line);
    const object = message as Record<string, unknown>;

    if ('QMP' in object) {
      if (this.current !== 'awaiting-greeting') throw malformed('a second QMP greeting arrived', line);
      this.current = 'greeted';
      return [{ type: 'greeting', greeting: readGreeting(object['QMP'], line) }];
    }
    if (typeof object['event'] === 'string') {
      return [{ type: 'event', event: readEvent(object, line) }];
    }
    if ('return' in object || 'error' in object) {
      const id = object['id'];
      const entry = typeof id === 'string' ? this.pending.get(id) : undefined;
      if (typeof id !== 'string' || entry === undefined) return [{ type: 'unmatched', message: object }];
      this.pending.delete(id);
      if ('return' in object) return [{ type: 'resolve', id, command: entry.command, value: object['return'] }];
      const error = object['error'];
      const errorObject = error !== null && typeof error === 'object' ? (error as Record<string, unknown>) : {};
      const errorClass = typeof errorObject['class'] === 'string' ? errorObject['class'] : 'GenericError';
      const desc = typeof errorObject['desc'] === 'string' ? errorObject['desc'] : JSON.stringify(error);
      return [
        {
          type: 'reject',
          id,
          command: entry.command,
          error: new KemariError('KEMARI_QMP_ERROR', `QMP ${entry.command} failed: ${errorClass}: ${desc}`, {
            details: { class: errorClass, desc, command: entry.command },
          }),
        },
      ];
    }
    throw malformed('a QMP line is neither greeting, reply nor event', line);
  }

  /**
   * Forgets a pending command (its timeout fired) and returns the rejection to deliver, or nothing if it was already
   * answered. A reply arriving later is reported as `unmatched`.
   */
  expire(id: string, timeoutMs: number): QmpAction | undefined {
    const entry = this.pending.get(id);
    if (entry === undefined) return undefined;
    this.pending.delete(id);
    return {
      type: 'reject',
      id,
      command: entry.command,
      error: new KemariError('KEMARI_TIMEOUT', `QMP ${entry.command} got no reply within ${timeoutMs} ms`, {
        details: { command: entry.command, timeoutMs },
      }),
    };
  }

  /**
   * Marks the session closed and returns one rejection per pending command, each with `reason` (so a dead QEMU fails
   * every waiting caller with the same KEMARI_QEMU_EXITED). Later calls return nothing.
   */
  close(reason: KemariError): QmpAction[] {
    if (this.current === 'closed') return [];
    this.current = 'closed';
    const actions: QmpAction[] = [];
    for (const [id, entry] of this.pending) {
      actions.push({
        type: 'reject',
        id,
        command: entry.command,
        error: new KemariError(reason.code, `QMP ${entry.command}: ${reason.message}`, {
          cause: reason,
          details: { ...reason.details, command: entry.command },
        }),
      });
    }
    this.pending.clear();
    return actions;
  }
}

function malformed(message: string, line: string, cause?: unknown): KemariError {
  return new KemariError('KEMARI_QMP_ERROR', message, {
    cause,
    details: { reason: 'malformed', line: line.length > 200 ? `${line.slice(0, 200)}...` : line },
  });
}

function readGreeting(value: unknown, line: string): QmpGreeting {
  if (value === null || typeof value !== 'object') throw malformed('the QMP greeting is not an object', line);
  const greeting = value as Record<string, unknown>;
  const version = (greeting['version'] ?? {}) as QmpGreeting['version'];
  const capabilities = Array.isArray(greeting['capabilities']) ? greeting['capabilities'].filter((c): c is string => typeof c === 'string') : [];
  return { version, capabilities };
}

function readEvent(object: Record<string, unknown>, line: string): QmpEvent {
  const data = object['data'];
  if (data !== undefined && (data === null || typeof data !== 'object' || Array.isArray(data))) throw malformed('a QMP event has non-object data', line);
  const timestamp = object['timestamp'] as Record<string, unknown> | undefined;
  return {
    event: object['event'] as string,
    data: (data ?? {}) as Record<string, unknown>,
    timestamp: {
      seconds: typeof timestamp?.['seconds'] === 'number' ? timestamp['seconds'] : 0,
      microseconds: typeof timestamp?.['microseconds'] === 'number' ? timestamp['microseconds'] : 0,
    },
  };
}
