/**
 * The guest RAM a migration stream describes, assembled into one image per block.
 *
 * Why: the parser emits pages as they arrive; a checkpoint needs the resulting memory (to diff against the last
 * epoch, to edit, to re-emit as a restore stream). Applying records in stream order gives exactly what the
 * destination QEMU would hold, since a later record of the same page overwrites an earlier one, as in QEMU.
 */
import { KemariError } from '../../errors.js';
import { PAGE_BYTES } from './format.js';
import { imagePages } from './image-pages.js';
import type { MigrationRecord, RamBlockInfo, RamPage } from './records.js';

/** Memory images of every RAM block, filled from page records. */
export class RamImage {
  /** The blocks, in stream order. */
  readonly blocks: readonly RamBlockInfo[];
  private readonly images = new Map<string, Uint8Array>();

  /** Allocates a zeroed image per block (a fresh QEMU's RAM is zero too). */
  constructor(blocks: readonly RamBlockInfo[]) {
    this.blocks = blocks.map((block) => ({ ...block }));
    for (const block of this.blocks) this.images.set(block.name, new Uint8Array(block.lengthBytes));
  }

  /** The image of `block`; throws KEMARI_INVALID_ARGUMENT for an unknown block. */
  image(block: string): Uint8Array {
    const image = this.images.get(block);
    if (image === undefined) throw new KemariError('KEMARI_INVALID_ARGUMENT', `no RAM block ${JSON.stringify(block)}`, { details: { block } });
    return image;
  }

  /** Applies a page or fill-page record (other record types are ignored, so a whole record list can be fed). */
  apply(record: MigrationRecord | RamPage): void {
    if ('type' in record && record.type !== 'page' && record.type !== 'fill-page') return;
    const page = record as RamPage;
    const image = this.image(page.block);
    if (page.offset < 0 || page.offset + PAGE_BYTES > image.byteLength || page.offset % PAGE_BYTES !== 0) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `page offset ${page.offset} outside RAM block ${JSON.stringify(page.block)}`, { details: { block: page.block, offset: page.offset } });
    }
    if ('fill' in page) image.fill(page.fill, page.offset, page.offset + PAGE_BYTES);
    else image.set(page.data, page.offset);
  }

  /**
   * Every page of every block (or of the blocks `include` accepts), zero pages as fill records: the input of a full
   * restore stream. Under x-ignore-shared, leave out the shared blocks: QEMU refuses pages of a block it ignores.
   */
  *pages(include: (block: RamBlockInfo) => boolean = () => true): Generator<RamPage, void, undefined> {
    for (const block of this.blocks) if (include(block)) yield* imagePages(block.name, this.image(block.name));
  }
}
