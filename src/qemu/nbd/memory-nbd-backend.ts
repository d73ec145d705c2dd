/**
 * An {@link NbdBackend} held in memory: a Uint8Array of the whole disk.
 *
 * Why: tests, and small disks whose replica kemari keeps in memory anyway, need a backend with no file system and
 * no latency; its bytes can be compared with a digest or with what the write observer saw.
 */
import { KemariError } from '../../errors.js';
import type { NbdBackend } from './nbd-backend.js';

/** A disk in memory. `bytes` is the live image: reading it shows every write the server accepted. */
export class MemoryNbdBackend implements NbdBackend {
  /** The live disk image (not a copy). */
  readonly bytes: Uint8Array;

  /** Serves `image` in place (a Uint8Array, not copied) or a new zero-filled disk of `image` bytes. */
  constructor(image: Uint8Array | number) {
    if (typeof image === 'number') {
      if (!Number.isSafeInteger(image) || image < 0) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', 'a memory disk size must be a non-negative safe integer', { details: { sizeBytes: image } });
      }
      this.bytes = new Uint8Array(image);
    } else if (image instanceof Uint8Array) {
      this.bytes = image;
    } else {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'a memory disk needs a Uint8Array or a size in bytes', { details: { image: typeof image } });
    }
  }

  /** Size of the disk in bytes. */
  get sizeBytes(): number {
    return this.bytes.length;
  }

  /** A copy of `length` bytes at `offset` (a copy, so later writes cannot change a reply still being sent). */
  read(offset: number, length: number): Uint8Array {
    checkRange(offset, length, this.bytes.length);
    return this.bytes.slice(offset, offset + length);
  }

  /** Copies `data` into the image at `offset`. */
  write(offset: number, data: Uint8Array): void {
    checkRange(offset, data.length, this.bytes.length);
    this.bytes.set(data, offset);
  }

  /** Nothing to make durable in memory. */
  flush(): void {}
}

/** Throws KEMARI_INVALID_ARGUMENT unless [offset, offset + length) lies within [0, sizeBytes). */
export function checkRange(offset: number, length: number, sizeBytes: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > sizeBytes) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `range [${offset}, +${length}) is outside the disk of ${sizeBytes} bytes`, {
      details: { offset, length, sizeBytes },
    });
  }
}
