; kemari test guest: a boot sector plus a small 32-bit stage, built with `nasm -f bin`.
;
; The guest runs a timer interrupt and, on every tick, does the work a checkpointing test wants to observe:
;   - increments a 64-bit tick counter at the fixed guest-physical address 0x200000,
;   - writes the counter into the next `dirtyPagesPerTick` pages of a ring of `ringPages` pages at 0x300000,
;   - every `serialEveryTicks` ticks prints `tick <counter>\n` to COM1,
;   - every `diskEveryTicks` ticks writes one sector through the legacy IDE ports (primary master, LBA28 PIO),
;   - after `powerOffAfterTicks` ticks (0: never) prints `power off\n` and powers the machine off through ACPI (S5).
; Parameters live in a block at image offset 0x200 (PARAMS_OFFSET), patched by examples/guest/build-guest.ts.
; See examples/guest/README.md for the memory map and the layouts. Keep the offsets below in sync with the builder.
;
; Image:  LBA 0 boot sector | LBA 1.. stage (parameter block first) | sectors the guest writes (diskLbaBase..)

%define PARAMS_VERSION      1
%define PARAMS_SIZE         64

; Parameter block offsets (relative to the block)
%define P_MAGIC             0x00    ; 'KGST'
%define P_VERSION           0x04    ; u16
%define P_SIZE              0x06    ; u16
%define P_TICK_HZ           0x08
%define P_DIRTY             0x0C
%define P_RING              0x10
%define P_SERIAL_EVERY      0x14
%define P_DISK_EVERY        0x18
%define P_LBA_BASE          0x1C
%define P_LBA_COUNT         0x20
%define P_FLAGS             0x24    ; bit 0: CACHE FLUSH after each sector write
%define P_POWER_OFF         0x28    ; ticks before the ACPI power-off (0: never); was reserved (zero) in older images

; Status page (guest-physical 0x200000, page 0x200 of pc.ram)
%define STATUS              0x200000
%define S_TICKS             STATUS + 0x000   ; u64 ticks since the timer started
%define S_DISK_WRITES       STATUS + 0x008   ; u64 sector writes issued (write index of the next one)
%define S_SERIAL_LINES      STATUS + 0x010   ; u64 `tick` lines printed completely
%define S_MAGIC             STATUS + 0x018   ; u32 'KRUN' once the stage has initialised
%define S_DISK_ERRORS       STATUS + 0x01C   ; u32 writes that ended with ERR/DF or timed out
%define S_RING_CURSOR       STATUS + 0x020   ; u32 ring page written next
%define S_SERIAL_LEFT       STATUS + 0x024   ; u32 ticks until the next line
%define S_DISK_LEFT         STATUS + 0x028   ; u32 ticks until the next sector write
%define S_DISK_SECTORS      STATUS + 0x02C   ; u32 LBA28 sectors reported by IDENTIFY (0: unknown)
%define S_FATAL             STATUS + 0x030   ; u32 1 + vector of a fatal exception (0: none)
%define S_PARAMS            STATUS + 0x040   ; effective (clamped) parameter block, 64 bytes
%define SECTOR_BUF          STATUS + 0x200   ; the last sector built, 512 bytes
%define IDENT_BUF           STATUS + 0x400   ; IDENTIFY DEVICE data, 512 bytes

%define E_TICK_HZ           S_PARAMS + P_TICK_HZ
%define E_DIRTY             S_PARAMS + P_DIRTY
%define E_RING              S_PARAMS + P_RING
%define E_SERIAL_EVERY      S_PARAMS + P_SERIAL_EVERY
%define E_DISK_EVERY        S_PARAMS + P_DISK_EVERY
%define E_LBA_BASE          S_PARAMS + P_LBA_BASE
%define E_LBA_COUNT         S_PARAMS + P_LBA_COUNT
%define E_FLAGS             S_PARAMS + P_FLAGS
%define E_POWER_OFF         S_PARAMS + P_POWER_OFF

%define RING                0x300000
%define RING_PAGES_MAX      4096            ; 16 MiB: the ring ends at 0x1300000, inside a 32 MiB guest
%define TICK_HZ_MIN         19              ; 1193182 / 19 < 65536: the PIT divisor fits 16 bits
%define TICK_HZ_MAX         10000
%define TICK_HZ_DEFAULT     100
%define SECTOR_MAGIC        0x4453474B      ; 'KGSD' little-endian
%define RUN_MAGIC           0x4E55524B      ; 'KRUN'
%define PIT_HZ              1193182
%define IDT_BASE            0x6000
%define STACK_TOP           0x90000
%define COM1                0x3F8
%define ATA                 0x1F0
%define ATA_CTRL            0x3F6
%define ATA_SPIN_MAX        2000000         ; status polls before a command is given up
%define PM1A_CNT            0x604           ; PIIX4 PM (QEMU `pc`): SeaBIOS puts PMBASE at 0x600, PM1a_CNT at +4
%define PM1_SLP_EN_S5       0x2000          ; SLP_EN (bit 13) with SLP_TYP 0, QEMU's S5 (its DSDT's _S5 is 0)

        org 0x7C00

; ---------------------------------------------------------------------------------------------------------------
; Boot sector (16-bit real mode): load the stage, enable A20, enter flat 32-bit protected mode.
; ---------------------------------------------------------------------------------------------------------------
        bits 16
boot:
        cli
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7C00
        mov [boot_drive], dl
        mov si, dap                     ; INT 13h AH=42h: extended (LBA) read
        mov ah, 0x42
        int 0x13
        jnc .loaded
        mov ax, 0x0200 | STAGE_SECTORS  ; fallback: CHS read of sectors 2.. of cylinder 0, head 0
        mov cx, 0x0002
        xor dh, dh
        mov dl, [boot_drive]
        mov bx, 0x7E00
        int 0x13
        jnc .loaded
        mov si, msg_disk_error
        mov dx, COM1
.err:   lodsb
        test al, al
        jz .halt
        out dx, al
        jmp .err
.halt:  hlt
        jmp .halt
.loaded:
        in al, 0x92                     ; fast A20: the ring at 0x300000 has address bit 20 set
        or al, 2
        and al, 0xFE
        out 0x92, al
        lgdt [gdt_desc]
        mov eax, cr0
        or eax, 1
        mov cr0, eax
        jmp 0x08:pm_entry

        bits 32
pm_entry:
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, STACK_TOP
        jmp stage_main

        align 8
gdt:    dq 0
        dq 0x00CF9A000000FFFF           ; 0x08: code, base 0, limit 4 GiB, 32-bit
        dq 0x00CF92000000FFFF           ; 0x10: data, base 0, limit 4 GiB
gdt_desc:
        dw gdt_desc - gdt - 1
        dd gdt

dap:    db 0x10, 0
        dw STAGE_SECTORS
        dw 0x7E00, 0                    ; offset, segment
        dq 1                            ; LBA of the stage
boot_drive:
        db 0x80
msg_disk_error:
        db "kemari-guest: cannot read the stage", 13, 10, 0

        times 510 - ($ - $$) db 0
        dw 0xAA55

; ---------------------------------------------------------------------------------------------------------------
; Stage: loaded at 0x7E00 (image offset 0x200). The parameter block comes first so its offset is fixed.
; ---------------------------------------------------------------------------------------------------------------
stage_start:
params:
        db "KGST"
        dw PARAMS_VERSION
        dw PARAMS_SIZE
        dd TICK_HZ_DEFAULT              ; tickHz
        dd 16                           ; dirtyPagesPerTick
        dd 1024                         ; ringPages
        dd 10                           ; serialEveryTicks (0: never)
        dd 10                           ; diskEveryTicks (0: never)
        dd 2048                         ; diskLbaBase
        dd 1024                         ; diskLbaCount
        dd 0                            ; flags
        dd 0                            ; powerOffAfterTicks (0: never)
        times PARAMS_SIZE - ($ - params) db 0

stage_main:
        cld
        mov edi, STATUS                 ; the status page starts zeroed
        xor eax, eax
        mov ecx, 1024
        rep stosd
        call uart_init
        cmp dword [params + P_MAGIC], "KGST"
        jne bad_params
        cmp word [params + P_VERSION], PARAMS_VERSION
        jne bad_params
        mov esi, params                 ; effective copy, then clamp it
        mov edi, S_PARAMS
        mov ecx, PARAMS_SIZE / 4
        rep movsd
        call clamp_params
        call ide_init
        call idt_init
        call pic_init
        call pit_init

        mov eax, [E_SERIAL_EVERY]
        mov [S_SERIAL_LEFT], eax
        mov eax, [E_DISK_EVERY]
        mov [S_DISK_LEFT], eax
        call print_banner
        mov dword [S_MAGIC], RUN_MAGIC
        sti
idle:   hlt
        jmp idle

bad_params:
        mov esi, msg_bad_params
        call serial_puts
        jmp halt_forever

; Bound every parameter so a hand-patched image cannot run the guest out of its memory or its disk.
clamp_params:
        mov eax, [E_TICK_HZ]
        test eax, eax
        jnz .hz_set
        mov eax, TICK_HZ_DEFAULT
.hz_set:
        cmp eax, TICK_HZ_MIN
        jae .hz_low_ok
        mov eax, TICK_HZ_MIN
.hz_low_ok:
        cmp eax, TICK_HZ_MAX
        jbe .hz_ok
        mov eax, TICK_HZ_MAX
.hz_ok: mov [E_TICK_HZ], eax

        mov eax, [E_RING]
        test eax, eax
        jnz .ring_set
        mov eax, 1
.ring_set:
        cmp eax, RING_PAGES_MAX
        jbe .ring_ok
        mov eax, RING_PAGES_MAX
.ring_ok:
        mov [E_RING], eax
        cmp [E_DIRTY], eax
        jbe .dirty_ok
        mov [E_DIRTY], eax
.dirty_ok:
        mov eax, [E_LBA_BASE]           ; never overwrite the boot sector or the stage
        cmp eax, STAGE_END_LBA
        jae .base_ok
        mov dword [E_LBA_BASE], STAGE_END_LBA
.base_ok:
        cmp dword [E_LBA_BASE], 0x0FFFFFFF
        jae .no_disk
        mov eax, 0x0FFFFFFF             ; base + count within LBA28
        sub eax, [E_LBA_BASE]
        cmp [E_LBA_COUNT], eax
        jbe .count_ok
        mov [E_LBA_COUNT], eax
.count_ok:
        cmp dword [E_LBA_COUNT], 0
        jne .done
.no_disk:
        mov dword [E_DISK_EVERY], 0
.done:  ret

; Once IDENTIFY has told the disk size, keep the sector ring inside it (or turn disk writes off).
clamp_disk_to_size:
        mov eax, [S_DISK_SECTORS]
        test eax, eax
        jz .done
        sub eax, [E_LBA_BASE]
        jbe .off
        cmp [E_LBA_COUNT], eax
        jbe .done
        mov [E_LBA_COUNT], eax
        ret
.off:   mov dword [E_DISK_EVERY], 0
.done:  ret

; ---------------------------------------------------------------------------------------------------------------
; Devices
; ---------------------------------------------------------------------------------------------------------------
uart_init:
        mov dx, COM1 + 1
        xor al, al
        out dx, al                      ; IER: no UART interrupts, we poll
        mov dx, COM1 + 3
        mov al, 0x80
        out dx, al                      ; DLAB on
        mov dx, COM1
        mov al, 1
        out dx, al                      ; divisor 1: 115200 baud
        mov dx, COM1 + 1
        xor al, al
        out dx, al
        mov dx, COM1 + 3
        mov al, 0x03
        out dx, al                      ; 8N1, DLAB off
        mov dx, COM1 + 2
        mov al, 0xC7
        out dx, al                      ; FIFO on, cleared
        mov dx, COM1 + 4
        mov al, 0x03
        out dx, al                      ; DTR, RTS; OUT2 off: no IRQ4
        ret

; IDENTIFY the primary master for its size; interrupts off at the drive (nIEN), we poll status.
ide_init:
        mov dx, ATA_CTRL
        mov al, 0x02
        out dx, al
        mov dx, ATA + 6
        mov al, 0xA0
        out dx, al
        call ide_wait_not_busy
        jc .none
        mov dx, ATA + 7
        mov al, 0xEC
        out dx, al
        in al, dx
        test al, al
        jz .none
        cmp al, 0xFF
        je .none
        call ide_wait_drq
        jc .none
        mov edi, IDENT_BUF
        mov ecx, 256
        mov dx, ATA
        rep insw
        mov eax, [IDENT_BUF + 120]      ; words 60-61: user-addressable LBA28 sectors
        mov [S_DISK_SECTORS], eax
        call clamp_disk_to_size
        ret
.none:  mov dword [E_DISK_EVERY], 0
        ret

; Status in AL; CF set if BSY did not clear in time.
ide_wait_not_busy:
        push ecx
        push edx
        mov ecx, ATA_SPIN_MAX
        mov dx, ATA + 7
.poll:  in al, dx
        test al, 0x80
        jz .ready
        dec ecx
        jnz .poll
        stc
        jmp .out
.ready: clc
.out:   pop edx
        pop ecx
        ret

; Wait for DRQ; CF set on ERR/DF or timeout.
ide_wait_drq:
        push ecx
        push edx
        mov ecx, ATA_SPIN_MAX
        mov dx, ATA + 7
.poll:  in al, dx
        test al, 0x80
        jnz .next
        test al, 0x21
        jnz .fail
        test al, 0x08
        jnz .ready
.next:  dec ecx
        jnz .poll
.fail:  stc
        jmp .out
.ready: clc
.out:   pop edx
        pop ecx
        ret

idt_init:
        xor ecx, ecx
.next:  mov eax, irq_ignore
        cmp ecx, 32
        jae .not_exception
        mov eax, [exception_stubs + ecx * 4]
        jmp .set
.not_exception:
        cmp ecx, 32
        jne .not_timer
        mov eax, timer_isr
        jmp .set
.not_timer:
        cmp ecx, 48
        jae .set
        mov eax, irq_eoi
.set:   lea edi, [IDT_BASE + ecx * 8]
        mov word [edi], ax              ; offset 15:0
        mov word [edi + 2], 0x08        ; code selector
        mov word [edi + 4], 0x8E00      ; present, ring 0, 32-bit interrupt gate
        shr eax, 16
        mov word [edi + 6], ax          ; offset 31:16
        inc ecx
        cmp ecx, 256
        jb .next
        lidt [idt_desc]
        ret

; Remap the PICs to vectors 0x20-0x2F; only IRQ0 (the PIT) is unmasked.
pic_init:
        mov al, 0x11
        out 0x20, al
        out 0xA0, al
        mov al, 0x20
        out 0x21, al
        mov al, 0x28
        out 0xA1, al
        mov al, 0x04
        out 0x21, al
        mov al, 0x02
        out 0xA1, al
        mov al, 0x01
        out 0x21, al
        out 0xA1, al
        mov al, 0xFE
        out 0x21, al
        mov al, 0xFF
        out 0xA1, al
        ret

; PIT channel 0, mode 2 (rate generator), divisor 1193182 / tickHz.
pit_init:
        mov eax, PIT_HZ
        xor edx, edx
        div dword [E_TICK_HZ]
        mov ecx, eax
        mov al, 0x34
        out 0x43, al
        mov al, cl
        out 0x40, al
        mov al, ch
        out 0x40, al
        ret

; ---------------------------------------------------------------------------------------------------------------
; Interrupts
; ---------------------------------------------------------------------------------------------------------------
timer_isr:
        pushad
        cld
        add dword [S_TICKS], 1
        adc dword [S_TICKS + 4], 0

        ; Dirty the next E_DIRTY ring pages: each gets the counter in its first 8 bytes.
        mov ecx, [E_DIRTY]
        test ecx, ecx
        jz .dirty_done
        mov esi, [S_RING_CURSOR]
        mov ebx, [E_RING]
        mov eax, [S_TICKS]
        mov edx, [S_TICKS + 4]
.dirty: mov edi, esi
        shl edi, 12
        mov [RING + edi], eax
        mov [RING + edi + 4], edx
        inc esi
        cmp esi, ebx
        jb .no_wrap
        xor esi, esi
.no_wrap:
        dec ecx
        jnz .dirty
        mov [S_RING_CURSOR], esi
.dirty_done:

        cmp dword [E_SERIAL_EVERY], 0
        je .serial_done
        dec dword [S_SERIAL_LEFT]
        jnz .serial_done
        mov eax, [E_SERIAL_EVERY]
        mov [S_SERIAL_LEFT], eax
        mov esi, msg_tick
        call serial_puts
        mov eax, [S_TICKS]
        mov edx, [S_TICKS + 4]
        call print_u64
        mov al, 10
        call serial_putc
        add dword [S_SERIAL_LINES], 1
        adc dword [S_SERIAL_LINES + 4], 0
.serial_done:

        cmp dword [E_DISK_EVERY], 0
        je .disk_done
        dec dword [S_DISK_LEFT]
        jnz .disk_done
        mov eax, [E_DISK_EVERY]
        mov [S_DISK_LEFT], eax
        call disk_write
.disk_done:

        mov eax, [E_POWER_OFF]          ; the tick that reaches powerOffAfterTicks is the last one
        test eax, eax
        jz .power_done
        cmp dword [S_TICKS + 4], 0
        jne power_off
        cmp [S_TICKS], eax
        jae power_off
.power_done:

        mov al, 0x20
        out 0x20, al
        popad
        iret

irq_eoi:                                ; a stray IRQ 1-15 (all masked, but be safe)
        push eax
        mov al, 0x20
        out 0xA0, al
        out 0x20, al
        pop eax
        iret

irq_ignore:
        iret

%assign vector 0
%rep 32
exception_ %+ vector:
        push dword vector
        jmp exception_common
%assign vector vector + 1
%endrep

exception_stubs:
%assign vector 0
%rep 32
        dd exception_ %+ vector
%assign vector vector + 1
%endrep

exception_common:
        cli
        mov eax, [esp]
        inc eax
        mov [S_FATAL], eax
        mov esi, msg_fatal
        call serial_puts
        mov eax, [esp]
        xor edx, edx
        call print_u64
        mov al, 10
        call serial_putc
halt_forever:
        cli
.halt:  hlt
        jmp .halt

; Power off the way an OS does: a last line (every byte out of the UART), then ACPI sleep to S5 through PM1a_CNT.
; Reached from the timer interrupt (an interrupt gate: interrupts are off) and never returns. If the write does
; nothing (no ACPI, another firmware), the guest stays halted with interrupts off.
power_off:
        cli
        mov esi, msg_power_off
        call serial_puts
        call serial_drain
        mov dx, PM1A_CNT
        mov ax, PM1_SLP_EN_S5
        out dx, ax
        jmp halt_forever

; ---------------------------------------------------------------------------------------------------------------
; Disk: one sector at LBA base + (writeIndex mod count), LBA28 PIO WRITE SECTORS, optional CACHE FLUSH.
; Sector: 0 'KGSD', 4 u32 version 1, 8 u64 counter, 16 u64 write index, 24 u32 LBA, 28..495 filler (counter low
; dword), 496 u64 counter again, 504 u64 write index again (a torn or stale sector fails the comparison).
; ---------------------------------------------------------------------------------------------------------------
disk_write:
        mov edi, SECTOR_BUF
        mov eax, [S_TICKS]
        mov ecx, 128
        rep stosd
        mov edi, SECTOR_BUF
        mov dword [edi], SECTOR_MAGIC
        mov dword [edi + 4], 1
        mov eax, [S_TICKS]
        mov edx, [S_TICKS + 4]
        mov [edi + 8], eax
        mov [edi + 12], edx
        mov [edi + 496], eax
        mov [edi + 500], edx
        mov eax, [S_DISK_WRITES]
        mov edx, [S_DISK_WRITES + 4]
        mov [edi + 16], eax
        mov [edi + 20], edx
        mov [edi + 504], eax
        mov [edi + 508], edx
        mov ecx, [E_LBA_COUNT]          ; 64-bit index mod 32-bit count, high half first
        mov eax, edx
        xor edx, edx
        div ecx
        mov eax, [S_DISK_WRITES]
        div ecx
        mov ebx, edx
        add ebx, [E_LBA_BASE]
        mov [edi + 24], ebx

        call ide_wait_not_busy
        jc .error
        mov dx, ATA + 6
        mov eax, ebx
        shr eax, 24
        and al, 0x0F
        or al, 0xE0                     ; LBA, master
        out dx, al
        mov dx, ATA + 2
        mov al, 1
        out dx, al
        mov dx, ATA + 3
        mov al, bl
        out dx, al
        mov dx, ATA + 4
        mov al, bh
        out dx, al
        mov dx, ATA + 5
        mov eax, ebx
        shr eax, 16
        out dx, al
        mov dx, ATA + 7
        mov al, 0x30                    ; WRITE SECTORS
        out dx, al
        call ide_wait_drq
        jc .error
        mov esi, SECTOR_BUF
        mov ecx, 256
        mov dx, ATA
        rep outsw
        call ide_wait_not_busy
        jc .error
        test al, 0x21
        jnz .error
        test dword [E_FLAGS], 1
        jz .counted
        mov dx, ATA + 7
        mov al, 0xE7                    ; CACHE FLUSH
        out dx, al
        call ide_wait_not_busy
        jc .error
        test al, 0x21
        jz .counted
.error: inc dword [S_DISK_ERRORS]
.counted:
        add dword [S_DISK_WRITES], 1
        adc dword [S_DISK_WRITES + 4], 0
        ret

; ---------------------------------------------------------------------------------------------------------------
; Serial output (COM1, polled)
; ---------------------------------------------------------------------------------------------------------------
serial_putc:                            ; AL = byte; waits for THRE before writing
        push edx
        push eax
        mov dx, COM1 + 5
.wait:  in al, dx
        test al, 0x20
        jz .wait
        pop eax
        mov dx, COM1
        out dx, al
        pop edx
        ret

serial_drain:                           ; waits for TEMT: the holding and shift registers are empty
        push edx
        push eax
        mov dx, COM1 + 5
.wait:  in al, dx
        test al, 0x40
        jz .wait
        pop eax
        pop edx
        ret

serial_puts:                            ; ESI = zero-terminated string
        push eax
.next:  lodsb
        test al, al
        jz .done
        call serial_putc
        jmp .next
.done:  pop eax
        ret

print_u64:                              ; EDX:EAX in decimal
        pushad
        mov edi, number_end
        mov ecx, 10
.digit: mov ebx, eax                    ; 64 / 32 division by 10, high half first
        mov eax, edx
        xor edx, edx
        div ecx
        mov esi, eax
        mov eax, ebx
        div ecx
        add dl, '0'
        dec edi
        mov [edi], dl
        mov edx, esi
        mov ebx, eax
        or ebx, edx
        jnz .digit
.out:   mov al, [edi]
        call serial_putc
        inc edi
        cmp edi, number_end
        jb .out
        popad
        ret

print_u32_field:                        ; ESI = label, EAX = value
        call serial_puts
        xor edx, edx
        call print_u64
        ret

print_banner:
        mov esi, msg_banner
        call serial_puts
        mov esi, msg_hz
        mov eax, [E_TICK_HZ]
        call print_u32_field
        mov esi, msg_dirty
        mov eax, [E_DIRTY]
        call print_u32_field
        mov esi, msg_ring
        mov eax, [E_RING]
        call print_u32_field
        mov esi, msg_serial
        mov eax, [E_SERIAL_EVERY]
        call print_u32_field
        mov esi, msg_disk
        mov eax, [E_DISK_EVERY]
        call print_u32_field
        mov esi, msg_base
        mov eax, [E_LBA_BASE]
        call print_u32_field
        mov esi, msg_count
        mov eax, [E_LBA_COUNT]
        call print_u32_field
        mov esi, msg_flags
        mov eax, [E_FLAGS]
        call print_u32_field
        mov esi, msg_sectors
        mov eax, [S_DISK_SECTORS]
        call print_u32_field
        mov eax, [E_POWER_OFF]          ; only when set, so the banner of a guest that never powers off is unchanged
        test eax, eax
        jz .no_power_off
        mov esi, msg_power_after
        call print_u32_field
.no_power_off:
        mov al, 10
        call serial_putc
        ret

idt_desc:
        dw 256 * 8 - 1
        dd IDT_BASE

msg_tick:       db "tick ", 0
msg_banner:     db "kemari-guest 1", 0
msg_hz:         db " tickHz=", 0
msg_dirty:      db " dirtyPagesPerTick=", 0
msg_ring:       db " ringPages=", 0
msg_serial:     db " serialEveryTicks=", 0
msg_disk:       db " diskEveryTicks=", 0
msg_base:       db " diskLbaBase=", 0
msg_count:      db " diskLbaCount=", 0
msg_flags:      db " flags=", 0
msg_sectors:    db " diskSectors=", 0
msg_power_after: db " powerOffAfterTicks=", 0
msg_power_off:  db "power off", 10, 0
msg_bad_params: db "kemari-guest: bad parameter block (magic or version)", 10, 0
msg_fatal:      db "kemari-guest: fatal exception ", 0
number:         times 20 db 0
number_end:

        times (512 - ($ - stage_start) % 512) % 512 db 0
stage_end:

STAGE_SECTORS   equ (stage_end - stage_start) / 512
STAGE_END_LBA   equ 1 + STAGE_SECTORS
