/* Assembly macro: if the MTRRs are disabled (as after reset, and as QEMU's qboot and a bare VMM
 * leave them), make write-back the default memory type. With MTRRs off every access is uncached,
 * which under KVM's shadow paging (PVM) made the guest ~100x slower. Device memory stays uncached
 * through the page tables (PCD|PWT). Clobbers eax, ebx, ecx, edx. */
#pragma once
#define MSR_MTRR_DEF_TYPE 0x2FF
#define MTRR_ENABLE_DEFAULT_WB 0x806 /* E (bit 11) | default type 6 (WB) */

.macro ENABLE_WB_MTRR
  mov $1, %eax
  cpuid
  bt $12, %edx                  /* CPUID.1:EDX.MTRR */
  jnc 91f
  mov $MSR_MTRR_DEF_TYPE, %ecx
  rdmsr
  bt $11, %eax                  /* already enabled by firmware: keep its setup */
  jc 91f
  mov $MTRR_ENABLE_DEFAULT_WB, %eax
  xor %edx, %edx
  wrmsr
91:
.endm
