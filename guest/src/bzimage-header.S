/* The real-mode part of lifeboat-guest.bin: a Linux boot sector and setup header (boot protocol
 * 2.15, Documentation/arch/x86/boot.rst) in SETUP_SECTS+1 sectors, followed in the file by the
 * protected-mode payload. SYSSIZE and INIT_SIZE come from the linked payload (see the Makefile).
 * A loader that jumps into the 16-bit setup code gets a message on COM1 and exit status 3. */
#include "layout.h"

#define SETUP_SECTS 1

  .code16
  .section .header, "a"
header_start:
  .org 0x1F1
  .byte SETUP_SECTS             /* 0x1F1 setup_sects */
  .word 0                       /* 0x1F2 root_flags */
  .long SYSSIZE                 /* 0x1F4 syssize: payload size in 16-byte units */
  .word 0                       /* 0x1F8 ram_size */
  .word 0xFFFF                  /* 0x1FA vid_mode: normal */
  .word 0                       /* 0x1FC root_dev */
  .word 0xAA55                  /* 0x1FE boot_flag */
  .byte 0xEB                    /* 0x200 jump over the header to the real-mode stub */
  .byte real_mode_stub - header_start - 0x202
  .ascii "HdrS"                 /* 0x202 header */
  .word 0x020F                  /* 0x206 version 2.15 */
  .long 0                       /* 0x208 realmode_swtch */
  .word 0                       /* 0x20C start_sys_seg */
  .word kernel_version - header_start - 0x200 /* 0x20E kernel_version */
  .byte 0                       /* 0x210 type_of_loader (loader writes) */
  .byte 0x01                    /* 0x211 loadflags: LOADED_HIGH */
  .word 0                       /* 0x212 setup_move_size */
  .long KERNEL_LOAD_ADDR        /* 0x214 code32_start */
  .long 0                       /* 0x218 ramdisk_image */
  .long 0                       /* 0x21C ramdisk_size */
  .long 0                       /* 0x220 bootsect_kludge */
  .word 0                       /* 0x224 heap_end_ptr */
  .byte 0                       /* 0x226 ext_loader_ver */
  .byte 0                       /* 0x227 ext_loader_type */
  .long 0                       /* 0x228 cmd_line_ptr (loader writes) */
  .long 0x7FFFFFFF              /* 0x22C initrd_addr_max */
  .long 0x200000                /* 0x230 kernel_alignment */
  .byte 0                       /* 0x234 relocatable_kernel: no, load at pref_address */
  .byte 0                       /* 0x235 min_alignment */
  .word 0x0001                  /* 0x236 xloadflags: XLF_KERNEL_64 (64-bit entry at +0x200) */
  .long 4095                    /* 0x238 cmdline_size */
  .long 0                       /* 0x23C hardware_subarch */
  .quad 0                       /* 0x240 hardware_subarch_data */
  .long 0                       /* 0x248 payload_offset */
  .long 0                       /* 0x24C payload_length */
  .quad 0                       /* 0x250 setup_data */
  .quad KERNEL_LOAD_ADDR        /* 0x258 pref_address */
  .long INIT_SIZE               /* 0x260 init_size: payload plus .bss and scratch */
  .long 0                       /* 0x264 handover_offset */
  .long 0                       /* 0x268 kernel_info_offset */

real_mode_stub:                 /* entered at CS = setup segment + 0x20, IP = 0 */
  cli
  push %cs
  pop %ds
  mov $(message - header_start - 0x200), %si
1:
  lodsb
  test %al, %al
  jz 2f
  mov $COM1_DEFAULT_PORT, %dx
  outb %al, %dx
  jmp 1b
2:
  mov $EXIT_STATUS_PORT, %dx
  mov $STATUS_PLATFORM, %eax
  outl %eax, %dx
3:
  hlt
  jmp 3b
message:
  .asciz "error: lifeboat-guest.bin has no 16-bit entry: start it through the 64-bit boot protocol, or boot lifeboat-guest.elf (PVH)\r\n"
kernel_version:
  .asciz "Lifeboat guest"
  .org (SETUP_SECTS + 1) * 512
