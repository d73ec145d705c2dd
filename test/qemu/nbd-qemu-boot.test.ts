/**
 * QEMU itself on kemari's NBD server: the guest's IDE disk is our export. The image's boot sector (assembled with
 * nasm at test time) writes one recognisable sector to LBA 1 through the legacy IDE ports (LBA28 PIO), flushes the
 * drive cache and halts; the write observer must see exactly that sector. Skipped, with the reason, when
 * qemu-system-x86_64 or nasm is missing (apt-get install qemu-system-x86 nasm).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { KemariError } from '../../src/errors.js';
import { MemoryNbdBackend } from '../../src/qemu/nbd/memory-nbd-backend.js';
import { NbdServer } from '../../src/qemu/nbd/nbd-server.js';
import { killChildren, missingTools, run, start, tempDir, waitFor } from '../helpers/nbd-tools.js';

const MISSING = missingTools({ 'qemu-system-x86_64': ['--version'], nasm: ['-v'] });
if (MISSING.length > 0) console.warn(`skipping the QEMU boot test: ${MISSING.join(', ')} not installed (apt-get install qemu-system-x86 nasm)`);

const SECTOR_BYTES = 512;
const MAGIC = 'KEMARI-NBD-BOOT!';

/** 16-bit real-mode boot sector: IDE LBA28 PIO write of one sector to LBA 1, FLUSH CACHE, then hlt forever. */
const BOOT_ASM = `
bits 16
org 0x7c00
start:
    cli
    xor ax, ax
    mov ds, ax
    mov dx, 0x1f7
.busy1:                 ; wait until the drive is not busy
    in al, dx
    test al, 0x80
    jnz .busy1
    mov dx, 0x1f6
    mov al, 0xe0        ; LBA mode, master, LBA bits 24-27 = 0
    out dx, al
    mov dx, 0x1f2
    mov al, 1           ; sector count 1
    out dx, al
    mov dx, 0x1f3
    mov al, 1           ; LBA bits 0-7 = 1
    out dx, al
    mov dx, 0x1f4
    xor al, al          ; LBA bits 8-15
    out dx, al
    mov dx, 0x1f5       ; LBA bits 16-23
    out dx, al
    mov dx, 0x1f7
    mov al, 0x30        ; WRITE SECTORS
    out dx, al
.drq:                   ; wait for BSY clear and DRQ set
    in al, dx
    test al, 0x80
    jnz .drq
    test al, 0x08
    jz .drq
    mov dx, 0x1f0
    mov si, magic
    mov cx, 8           ; words 0-7: the 16-byte magic
    cld
    rep outsw
    mov cx, 248         ; words 8-255: their own index
    mov ax, 8
.fill:
    out dx, ax
    inc ax
    loop .fill
    mov dx, 0x1f7
.busy2:
    in al, dx
    test al, 0x80
    jnz .busy2
    mov al, 0xe7        ; FLUSH CACHE
    out dx, al
.busy3:
    in al, dx
    test al, 0x80
    jnz .busy3
.halt:
    hlt
    jmp .halt
magic:
    db '${MAGIC}'
    times 510 - ($ - $$) db 0
    dw 0xaa55
`;

/** The sector the boot code writes: the magic, then little-endian 16-bit words holding their index (8..255). */
function expectedSector(): Uint8Array {
  const sector = new Uint8Array(SECTOR_BYTES);
  sector.set(new TextEncoder().encode(MAGIC), 0);
  const view = new DataView(sector.buffer);
  for (let word = 8; word < SECTOR_BYTES / 2; word += 1) view.setUint16(word * 2, word, true);
  return sector;
}

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  await killChildren(); // QEMU, by PID, before the server it uses goes away
  for (const f of cleanups.splice(0).reverse()) await f();
});

const SKIP_NOTE = MISSING.length === 0 ? '' : ` [skipped: ${MISSING.join(', ')} missing, apt-get install qemu-system-x86 nasm]`;

describe.skipIf(MISSING.length > 0)(`QEMU boots from the NBD server${SKIP_NOTE}`, () => {
  it('sees the sector the guest writes through the legacy IDE ports', async () => {
    const { dir, remove } = tempDir();
    cleanups.push(remove);
    const asmPath = join(dir, 'boot.asm');
    const binPath = join(dir, 'boot.bin');
    writeFileSync(asmPath, BOOT_ASM);
    const assembled = await run('nasm', ['-f', 'bin', '-o', binPath, asmPath]);
    expect(assembled.stderr).toBe('');
    const boot = readFileSync(binPath);
    expect(boot.length).toBe(SECTOR_BYTES);

    const image = new Uint8Array(1024 * 1024);
    image.set(boot, 0);
    const backend = new MemoryNbdBackend(image);
    const writes: Array<{ offset: number; data: Uint8Array }> = [];
    const errors: KemariError[] = [];
    const path = join(dir, 'nbd.sock');
    const server = await NbdServer.listen({
      backend,
      path,
      onWrite: (offset, data) => {
        writes.push({ offset, data });
      },
      onClientError: (error) => errors.push(error),
    });
    cleanups.push(() => server.close());

    const qemu = start('qemu-system-x86_64', [
      '-machine', 'pc,accel=tcg',
      '-m', '32',
      '-nodefaults',
      '-display', 'none',
      '-no-reboot',
      '-drive', `driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=${path},if=ide`,
    ]);
    let exitCode: number | null | undefined;
    void qemu.exited.then((code) => (exitCode = code));
    const sawWrite = await waitFor(() => writes.length > 0 || exitCode !== undefined, 30_000);
    expect(sawWrite, `no write within 30 s; QEMU output:\n${qemu.output()}`).toBe(true);
    expect(exitCode, `QEMU exited early:\n${qemu.output()}`).toBeUndefined();

    expect(writes.map((w) => [w.offset, w.data.length])).toEqual([[SECTOR_BYTES, SECTOR_BYTES]]);
    expect(Buffer.from(writes[0]!.data).equals(Buffer.from(expectedSector()))).toBe(true);
    expect(Buffer.from(backend.bytes.subarray(SECTOR_BYTES, 2 * SECTOR_BYTES)).equals(Buffer.from(expectedSector()))).toBe(true);
    // The firmware read the boot sector through the export, and the guest's FLUSH CACHE became an NBD flush.
    expect(server.stats.reads).toBeGreaterThanOrEqual(1);
    expect(await waitFor(() => server.stats.flushes >= 1, 10_000)).toBe(true);
    expect(errors).toEqual([]);
  });
});
