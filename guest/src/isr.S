/* One 16-byte stub per vector (stub n at isr_stubs + 16*n): pushes a dummy error code where the CPU
 * pushes none, then the vector, saves the general registers and calls isr_dispatch(frame). */
  .section .text
  .altmacro
  .macro stub n
  .balign 16
  .if (\n == 8) || ((\n >= 10) && (\n <= 14)) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
  .else
  pushq $0
  .endif
  pushq $\n
  jmp isr_common
  .endm

  .balign 16
  .globl isr_stubs
isr_stubs:
  .set i, 0
  .rept 256
  stub %i
  .set i, i + 1
  .endr

isr_common:
  push %rax
  push %rbx
  push %rcx
  push %rdx
  push %rsi
  push %rdi
  push %rbp
  push %r8
  push %r9
  push %r10
  push %r11
  push %r12
  push %r13
  push %r14
  push %r15
  cld
  mov %rsp, %rdi
  call isr_dispatch
  pop %r15
  pop %r14
  pop %r13
  pop %r12
  pop %r11
  pop %r10
  pop %r9
  pop %r8
  pop %rbp
  pop %rdi
  pop %rsi
  pop %rdx
  pop %rcx
  pop %rbx
  pop %rax
  add $16, %rsp
  iretq
