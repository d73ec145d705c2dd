/**
 * One thread of {@link PagesWorkerPool}: runs parts of scans and delta batches on shared memory with the backend
 * this thread loaded (the kemari_pages addon when it loads here, the TypeScript fallback otherwise, chosen exactly as
 * on the main thread, KEMARI_PAGES_IMPLEMENTATION=js included).
 *
 * Why it trusts its jobs: the pool validated every argument on the main thread (views in shared memory, lengths,
 * disjointness) before splitting the work, so a part here only rebuilds views from (buffer id, offset) pairs and
 * calls the backend; an exception is still caught and reported per part, so one bad part fails one operation and
 * not the thread.
 */
import { parentPort } from 'node:worker_threads';
import { KemariError } from '../errors.js';
import { activeBackend, pagesImplementation, pagesNativeLoadError } from './implementation.js';
import type { EncodeJobMessage, FromWorker, ScanJobMessage, SharedRef, ToWorker } from './worker-protocol.js';

const port = parentPort;
if (port === null) throw new Error('worker-thread.ts runs only as a worker thread of PagesWorkerPool');

const buffers = new Map<number, SharedArrayBuffer>();
/** File mappings of this thread (FileMessage), and why a file could not be mapped here. */
const mappings = new Map<number, ArrayBuffer>();
const mappingErrors = new Map<number, string>();
let fault: 'throw' | 'exit' | undefined;

function bufferById(id: number): SharedArrayBuffer | ArrayBuffer {
  const buffer = buffers.get(id) ?? mappings.get(id);
  if (buffer !== undefined) return buffer;
  const failed = mappingErrors.get(id);
  // Not the caller's argument at fault but this thread (it has no addon, or the file went away): a worker failure.
  if (failed !== undefined) throw new KemariError('KEMARI_WORKER_FAILED', `shared file ${id} could not be mapped in this worker: ${failed}`);
  throw new Error(`shared buffer ${id} was never registered with this worker`);
}

function bufferOf(ref: SharedRef): SharedArrayBuffer | ArrayBuffer {
  return bufferById(ref[0]);
}

function scan(job: ScanJobMessage): number {
  const { pageBytes, firstPage, pageCount, update } = job;
  const bytes = pageCount * pageBytes;
  const region = new Uint8Array(bufferOf(job.region), job.region[1] + firstPage * pageBytes, bytes);
  const changedPages = new Uint32Array(bufferOf(job.changedPages), job.changedPages[1] + firstPage * 4, pageCount);
  const zeroFlags = new Uint8Array(bufferOf(job.zeroFlags), job.zeroFlags[1] + firstPage, pageCount);
  let count: number;
  if (job.kind === 'shadow') {
    const shadow = new Uint8Array(bufferOf(job.reference), job.reference[1] + firstPage * pageBytes, bytes);
    count = activeBackend.scanShadow(region, pageBytes, shadow, changedPages, zeroFlags, update);
  } else {
    const table =
      job.kind === 'fingerprints64'
        ? new BigUint64Array(bufferOf(job.reference), job.reference[1] + firstPage * 8, pageCount)
        : new Uint32Array(bufferOf(job.reference), job.reference[1] + firstPage * 8, pageCount * 2);
    count = activeBackend.scanFingerprints(region, pageBytes, table, job.seed, changedPages, zeroFlags, update);
  }
  // The backend numbered pages from the start of this part; the pool merges region page numbers.
  if (firstPage !== 0) for (let k = 0; k < count; k++) changedPages[k] = changedPages[k]! + firstPage;
  return count;
}

function encode(job: EncodeJobMessage): number {
  const { pageBytes, budgetBytes, first, count } = job;
  const descriptors = new Float64Array(bufferOf(job.descriptors), job.descriptors[1] + first * 32, count * 4);
  const lengths = new Int32Array(bufferOf(job.lengths), job.lengths[1] + first * 4, count);
  const outBuffer = bufferOf(job.out);
  const outStart = job.out[1] + first * budgetBytes;
  let total = 0;
  for (let k = 0; k < count; k++) {
    const page = new Uint8Array(bufferById(descriptors[4 * k]!), descriptors[4 * k + 1]!, pageBytes);
    const base = new Uint8Array(bufferById(descriptors[4 * k + 2]!), descriptors[4 * k + 3]!, pageBytes);
    const out = new Uint8Array(outBuffer, outStart + k * budgetBytes, budgetBytes);
    const n = activeBackend.encodeDelta(base, page, out, budgetBytes);
    lengths[k] = n;
    if (n > 0) total += n;
  }
  return total;
}

function post(message: FromWorker): void {
  port!.postMessage(message);
}

port.on('message', (message: ToWorker) => {
  switch (message.type) {
    case 'buffer':
      buffers.set(message.id, message.buffer);
      return;
    case 'file':
      try {
        // Only a real MAP_SHARED mapping sees the file change: the fallback's "mapping" is a copy taken now, and
        // scanning it later would report changed pages as unchanged. A thread that came up without the addon
        // (respawned after a crash, say, while the pool was started native) refuses, and its scans of the file fail.
        if (pagesImplementation() !== 'native') throw new Error(`this thread has no native mmap (pages ${pagesImplementation()}): it cannot map ${message.path}`);
        mappings.set(message.id, activeBackend.mmapFile(message.path, message.bytes));
      } catch (error) {
        mappingErrors.set(message.id, error instanceof Error ? error.message : String(error));
      }
      return;
    case 'forget': {
      buffers.delete(message.id);
      mappingErrors.delete(message.id);
      const mapping = mappings.get(message.id);
      if (mapping !== undefined) {
        mappings.delete(message.id);
        activeBackend.unmap(mapping);
      }
      return;
    }
    case 'fault':
      fault = message.mode;
      return;
    case 'scan':
    case 'encode': {
      if (fault === 'exit') process.exit(3);
      if (fault === 'throw') throw new Error('injected worker fault');
      try {
        const value = message.type === 'scan' ? scan(message) : encode(message);
        post({ type: 'done', op: message.op, part: message.part, value });
      } catch (error) {
        const code = typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'string' ? error.code : undefined;
        post({ type: 'failed', op: message.op, part: message.part, message: error instanceof Error ? error.message : String(error), code });
      }
      return;
    }
  }
});

const loadError = pagesNativeLoadError();
post({
  type: 'ready',
  implementation: pagesImplementation(),
  nativeLoadError: loadError === undefined ? undefined : loadError instanceof Error ? loadError.message : String(loadError),
});
