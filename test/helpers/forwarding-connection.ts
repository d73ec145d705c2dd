/**
 * A Connection that hands every call to an inner one: the base of test connections that change one behaviour
 * (record the writes, hold some bytes back) and forward the rest unchanged.
 */
import type { KemariError } from '../../src/errors.js';
import type { Connection, ConnectionEvents } from '../../src/transport/connection.js';

export class ForwardingConnection implements Connection {
  constructor(protected readonly inner: Connection) {}

  write(chunks: readonly Uint8Array[]): boolean {
    return this.inner.write(chunks);
  }
  close(error?: KemariError): void {
    this.inner.close(error);
  }
  get bufferedBytes(): number {
    return this.inner.bufferedBytes;
  }
  get closed(): boolean {
    return this.inner.closed;
  }
  get peer(): string {
    return this.inner.peer;
  }
  on<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this {
    this.inner.on(event, listener);
    return this;
  }
  off<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this {
    this.inner.off(event, listener);
    return this;
  }
}
