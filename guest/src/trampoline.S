/* Real-mode start-up code for the application processors. The BSP copies the bytes between
 * trampoline_start and trampoline_end to a free page below 1 MiB, patches the t_* fields and sends
 * INIT/SIPI with that page as the vector. The AP climbs from real mode to long mode and jumps to
 * t_entry(t_arg) on t_stack. */
#include "layout.h"
#include "mtrr.h"

  .section .rodata
  .balign 16
  .globl trampoline_start, trampoline_end
  .globl t_gdt, t_gdt_desc, t_far32, t_far64, t_cr3, t_stack, t_arg, t_entry, t_code32, t_code64
  .code16
trampoline_start:
  cli
  cld
  mov %cs, %ax
  mov %ax, %ds
  xor %ebx, %ebx
  mov %ax, %bx
  shl $4, %ebx                          /* linear address of this page */
  mov $0x31, %eax                       /* PE | ET | NE; clears CD/NW left set by INIT */
  lgdtl (t_gdt_desc - trampoline_start)
  mov %eax, %cr0
  ljmpl *(t_far32 - trampoline_start)

  .code32
t_code32:
  mov $SEL_DATA, %ax
  mov %ax, %ds
  mov %ax, %es
  mov %ax, %ss
  mov %ebx, %ebp
  ENABLE_WB_MTRR
  mov %ebp, %ebx
  mov (t_cr3 - trampoline_start)(%ebx), %eax
  mov %eax, %cr3
  mov %cr4, %eax
  or $0x20, %eax                        /* PAE */
  mov %eax, %cr4
  mov $0xC0000080, %ecx                 /* EFER.LME */
  rdmsr
  or $0x100, %eax
  wrmsr
  mov $0x80010031, %eax                 /* PG | WP | NE | ET | PE */
  mov %eax, %cr0
  ljmp *(t_far64 - trampoline_start)(%ebx)

  .code64
t_code64:
  mov (t_stack - trampoline_start)(%rbx), %rsp
  mov (t_arg - trampoline_start)(%rbx), %rdi
  mov (t_entry - trampoline_start)(%rbx), %rax
  jmp *%rax

  .balign 8
t_gdt:
  .quad 0
  .quad 0x00AF9A000000FFFF
  .quad 0x00CF92000000FFFF
  .quad 0x00CF9A000000FFFF
t_gdt_end:
  .balign 4
t_gdt_desc:
  .word t_gdt_end - t_gdt - 1
  .long 0                               /* patched: linear address of t_gdt */
  .balign 4
t_far32:
  .long 0                               /* patched: linear address of t_code32 */
  .word SEL_CODE32
  .balign 4
t_far64:
  .long 0                               /* patched: linear address of t_code64 */
  .word SEL_CODE64
  .balign 4
t_cr3: .long 0
  .balign 8
t_stack: .quad 0
t_arg: .quad 0
t_entry: .quad 0
trampoline_end:
