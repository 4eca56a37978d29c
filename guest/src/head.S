/* Entry points. Offset 0 of the image (0x100000): the PVH entry (32-bit protected mode, paging off,
 * EBX = hvm_start_info), used by QEMU -kernel. Offset 0x200: the Linux x86-64 boot protocol entry
 * (long mode, identity mapping, RSI = boot_params), used by Lifeboat's VMM. The PVH entry builds a
 * boot_params from the start_info (as Linux's pvh_start_xen does) and enters the 64-bit entry, so
 * both loaders run the same code from offset 0x200 on. */
#include "layout.h"
#include "mtrr.h"

#define PTE_PRESENT 0x1
#define PTE_WRITE 0x2
#define PTE_LARGE 0x80
#define CR0_PG 0x80000000
#define CR4_PAE 0x20
#define MSR_EFER 0xC0000080
#define EFER_LME 0x100

  .section .note.Xen, "a"
  .balign 4
  .long 4                 /* name size: "Xen\0" */
  .long 4                 /* descriptor size */
  .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
  .asciz "Xen"
  .balign 4
  .long pvh_start32

  .section .pvh_scratch, "aw", @nobits
  .balign 4096
pvh_pml4: .skip 4096
pvh_pdpt: .skip 4096
pvh_pd: .skip 4 * 4096
  .globl pvh_boot_params
pvh_boot_params: .skip 4096
pvh_stack: .skip 8192
pvh_stack_top:

  .section .bss
  .balign 16
boot_stack: .skip 16384
  .globl boot_stack_top
boot_stack_top:

  .section .data
  .balign 16
  .globl kernel_gdt
kernel_gdt:
  .quad 0
  .quad 0x00AF9A000000FFFF /* SEL_CODE64: 64-bit code, ring 0 */
  .quad 0x00CF92000000FFFF /* SEL_DATA: flat data */
  .quad 0x00CF9A000000FFFF /* SEL_CODE32: flat 32-bit code (trampoline only) */
  .quad 0x00CFF2000000FFFF /* SEL_USER_DATA: flat data, ring 3 */
  .quad 0x00AFFA000000FFFF /* SEL_USER_CODE64: 64-bit code, ring 3 */
  .globl gdt_tss_slots
gdt_tss_slots:             /* SEL_TSS_BASE + 16*slot: one 16-byte TSS descriptor per CPU (slot 0 the BSP, 1+i AP i) */
  .skip 16 * (MAX_CPUS + 1)
kernel_gdt_end:
  .globl kernel_gdt_desc
kernel_gdt_desc:
  .word kernel_gdt_end - kernel_gdt - 1
  .quad kernel_gdt

  .section .text.head, "ax"
  .code32
  .globl pvh_start32
pvh_start32:
  cli
  cld
  mov %ebx, %esi                 /* hvm_start_info, kept until C */
  ENABLE_WB_MTRR

  /* Identity-map 0-4 GiB with 2 MiB pages. */
  mov $pvh_pd, %edi
  xor %ecx, %ecx
1:
  mov %ecx, %eax
  shl $21, %eax
  or $(PTE_PRESENT | PTE_WRITE | PTE_LARGE), %eax
  mov %eax, (%edi, %ecx, 8)
  movl $0, 4(%edi, %ecx, 8)
  inc %ecx
  cmp $2048, %ecx
  jne 1b

  mov $pvh_pdpt, %edi
  xor %ecx, %ecx
2:
  xor %eax, %eax
  cmp $4, %ecx
  jae 3f
  mov %ecx, %eax
  shl $12, %eax
  add $pvh_pd, %eax
  or $(PTE_PRESENT | PTE_WRITE), %eax
3:
  mov %eax, (%edi, %ecx, 8)
  movl $0, 4(%edi, %ecx, 8)
  inc %ecx
  cmp $512, %ecx
  jne 2b

  mov $pvh_pml4, %edi
  xor %eax, %eax
  mov $1024, %ecx
  rep stosl
  movl $(pvh_pdpt + PTE_PRESENT + PTE_WRITE), pvh_pml4

  mov $pvh_pml4, %eax
  mov %eax, %cr3
  mov %cr4, %eax
  or $CR4_PAE, %eax
  mov %eax, %cr4
  mov $MSR_EFER, %ecx
  rdmsr
  or $EFER_LME, %eax
  wrmsr
  lgdt kernel_gdt_desc
  mov %cr0, %eax
  or $(CR0_PG | 1), %eax
  mov %eax, %cr0
  ljmp $SEL_CODE64, $pvh_start64

  .code64
pvh_start64:
  mov $SEL_DATA, %eax
  mov %eax, %ds
  mov %eax, %es
  mov %eax, %ss
  mov %eax, %fs
  mov %eax, %gs
  mov $pvh_stack_top, %esp
  mov %esi, %edi
  call pvh_build_boot_params     /* returns the boot_params address */
  mov %rax, %rsi
  jmp entry64

  /* The Linux boot protocol's 64-bit entry: payload + 0x200. */
  .org ENTRY64_OFFSET
  .globl entry64
entry64:
  cli
  cld
  mov %rsi, %r15                 /* boot_params */
  ENABLE_WB_MTRR
  rdtsc
  shl $32, %rdx
  or %rdx, %rax
  mov %rax, %r14                 /* TSC at entry, for the boot-time report */
  lgdt kernel_gdt_desc(%rip)
  pushq $SEL_CODE64
  lea 1f(%rip), %rax
  pushq %rax
  lretq
1:
  mov $SEL_DATA, %eax
  mov %eax, %ds
  mov %eax, %es
  mov %eax, %ss
  mov %eax, %fs
  mov %eax, %gs
  lea __bss_start(%rip), %rdi
  lea __bss_end(%rip), %rcx
  sub %rdi, %rcx
  shr $3, %rcx
  xor %eax, %eax
  rep stosq
  lea boot_stack_top(%rip), %rsp
  mov %r15, %rdi
  mov %r14, %rsi
  call kernel_main
4:
  cli
  hlt
  jmp 4b
