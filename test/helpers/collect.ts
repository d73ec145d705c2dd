/** Records what a connection delivers: its chunks, every close event, and a promise of the first close. */
import type { KemariError } from '../../src/errors.js';
import type { Connection } from '../../src/transport/connection.js';

export function collect(connection: Connection): { chunks: Uint8Array[]; closes: (KemariError | undefined)[]; closed: Promise<KemariError | undefined> } {
  const chunks: Uint8Array[] = [];
  const closes: (KemariError | undefined)[] = [];
  connection.on('data', (chunk) => chunks.push(chunk));
  const closed = new Promise<KemariError | undefined>((resolve) =>
    connection.on('close', (error) => {
      closes.push(error);
      resolve(error);
    }),
  );
  return { chunks, closes, closed };
}
