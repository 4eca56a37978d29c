// The KVM structs are declared once (vmm/kvm/structs.ts); their sizes and offsets must be those of
// <linux/kvm.h> on x86-64, or every ioctl silently reads garbage.
import assert from 'node:assert/strict';
import * as ioc from '../../vmm/kvm/ioctls.js';
import * as s from '../../vmm/kvm/structs.js';
import { Kvm } from '../../vmm/kvm/system.js';
import { VcpuFd } from '../../vmm/kvm/vcpu.js';
import { requireKvm } from '../helpers/vmm.js';

describe('KVM struct layouts', () => {
  it('have the sizes of <linux/kvm.h> (x86-64)', () => {
    const sizes: Array<[string, number, number]> = [
      ['kvm_run', s.kvmRun.size, 2352],
      ['kvm_regs', s.kvmRegs.size, 144],
      ['kvm_sregs', s.kvmSregs.size, 312],
      ['kvm_segment', s.kvmSegment.size, 24],
      ['kvm_dtable', s.kvmDtable.size, 16],
      ['kvm_fpu', s.kvmFpu.size, 416],
      ['kvm_userspace_memory_region', s.kvmUserspaceMemoryRegion.size, 32],
      ['kvm_cpuid2', s.kvmCpuid2Header.size, 8],
      ['kvm_cpuid_entry2', s.kvmCpuidEntry2.size, 40],
      ['kvm_msrs', s.kvmMsrsHeader.size, 8],
      ['kvm_msr_entry', s.kvmMsrEntry.size, 16],
      ['kvm_irq_level', s.kvmIrqLevel.size, 8],
      ['kvm_irqfd', s.kvmIrqfd.size, 32],
      ['kvm_ioeventfd', s.kvmIoeventfd.size, 64],
      ['kvm_pit_config', s.kvmPitConfig.size, 64],
      ['kvm_dirty_log', s.kvmDirtyLog.size, 16],
      ['kvm_clear_dirty_log', s.kvmClearDirtyLog.size, 24],
      ['kvm_enable_cap', s.kvmEnableCap.size, 104],
      ['kvm_clock_data', s.kvmClockData.size, 48],
      ['kvm_irqchip', s.kvmIrqchip.size, 520],
      ['kvm_lapic_state', s.KVM_LAPIC_STATE_SIZE, 1024],
      ['kvm_xsave', s.KVM_XSAVE_SIZE, 4096],
      ['kvm_xcrs', s.KVM_XCRS_SIZE, 392],
      ['kvm_debugregs', s.KVM_DEBUGREGS_SIZE, 128],
      ['kvm_vcpu_events', s.KVM_VCPU_EVENTS_SIZE, 64],
      ['kvm_pit_state2', s.KVM_PIT_STATE2_SIZE, 112],
      ['kvm_mp_state', s.KVM_MP_STATE_SIZE, 4],
    ];
    for (const [name, actual, expected] of sizes) assert.equal(actual, expected, name);
  });

  it('put every field at its header offset', () => {
    const f = (l: { fields: Record<string, readonly [number, string]> }, name: string) => l.fields[name]![0];
    assert.equal(f(s.kvmRun, 'immediate_exit'), 1);
    assert.equal(f(s.kvmRun, 'exit_reason'), 8);
    assert.equal(f(s.kvmRun, 'io_direction'), 32);
    assert.equal(f(s.kvmRun, 'io_size'), 33);
    assert.equal(f(s.kvmRun, 'io_port'), 34);
    assert.equal(f(s.kvmRun, 'io_count'), 36);
    assert.equal(f(s.kvmRun, 'io_data_offset'), 40);
    assert.equal(f(s.kvmRun, 'mmio_phys_addr'), 32);
    assert.equal(s.KVM_RUN_MMIO_DATA_OFFSET, 40);
    assert.equal(f(s.kvmRun, 'mmio_len'), 48);
    assert.equal(f(s.kvmRun, 'mmio_is_write'), 52);
    assert.equal(f(s.kvmRun, 'system_event_type'), 32);
    assert.equal(f(s.kvmRun, 'internal_suberror'), 32);
    assert.equal(f(s.kvmRun, 'kvm_valid_regs'), 288);
    assert.equal(f(s.kvmRegs, 'rsi'), 32);
    assert.equal(f(s.kvmRegs, 'rsp'), 48);
    assert.equal(f(s.kvmRegs, 'rbp'), 56);
    assert.equal(f(s.kvmRegs, 'r8'), 64);
    assert.equal(f(s.kvmRegs, 'r15'), 120);
    assert.equal(f(s.kvmRegs, 'rip'), 128);
    assert.equal(f(s.kvmRegs, 'rflags'), 136);
    assert.deepEqual(s.SREGS_MEMBER_OFFSET, { cs: 0, ds: 24, es: 48, fs: 72, gs: 96, ss: 120, tr: 144, ldt: 168, gdt: 192, idt: 208 });
    for (const [name, off] of [['cr0', 224], ['cr2', 232], ['cr3', 240], ['cr4', 248], ['cr8', 256], ['efer', 264], ['apic_base', 272], ['interrupt_bitmap0', 280]] as const) {
      assert.equal(f(s.kvmSregs, name), off, name);
    }
    assert.equal(f(s.kvmSegment, 'limit'), 8);
    assert.equal(f(s.kvmSegment, 'selector'), 12);
    assert.equal(f(s.kvmSegment, 'type'), 14);
    assert.equal(f(s.kvmSegment, 'unusable'), 22);
    assert.equal(f(s.kvmDtable, 'limit'), 8);
    assert.equal(f(s.kvmFpu, 'fcw'), 128);
    assert.equal(f(s.kvmFpu, 'mxcsr'), 408);
    assert.equal(f(s.kvmUserspaceMemoryRegion, 'guest_phys_addr'), 8);
    assert.equal(f(s.kvmUserspaceMemoryRegion, 'memory_size'), 16);
    assert.equal(f(s.kvmUserspaceMemoryRegion, 'userspace_addr'), 24);
    assert.equal(f(s.kvmCpuidEntry2, 'flags'), 8);
    assert.equal(f(s.kvmCpuidEntry2, 'eax'), 12);
    assert.equal(f(s.kvmCpuidEntry2, 'edx'), 24);
    assert.equal(f(s.kvmMsrEntry, 'data'), 8);
    assert.equal(f(s.kvmIrqfd, 'gsi'), 4);
    assert.equal(f(s.kvmIrqfd, 'flags'), 8);
    assert.equal(f(s.kvmIoeventfd, 'addr'), 8);
    assert.equal(f(s.kvmIoeventfd, 'len'), 16);
    assert.equal(f(s.kvmIoeventfd, 'fd'), 20);
    assert.equal(f(s.kvmIoeventfd, 'flags'), 24);
    assert.equal(f(s.kvmDirtyLog, 'dirty_bitmap'), 8);
    assert.equal(f(s.kvmClearDirtyLog, 'first_page'), 8);
    assert.equal(f(s.kvmClearDirtyLog, 'dirty_bitmap'), 16);
    assert.equal(s.LAPIC_LVT0_OFFSET, 0x350);
    assert.equal(s.LAPIC_LVT1_OFFSET, 0x360);
  });

  it('keep every field inside its struct and fields apart from each other (except union members)', () => {
    for (const l of [s.kvmRegs, s.kvmSegment, s.kvmFpu, s.kvmUserspaceMemoryRegion, s.kvmIoeventfd, s.kvmIrqfd, s.kvmCpuidEntry2, s.kvmMsrEntry]) {
      const spans = Object.entries(l.fields as Record<string, readonly [number, s.FieldType]>).map(([name, [off, type]]) => ({ name, off, end: off + s.FIELD_SIZE[type] })).sort((a, b) => a.off - b.off);
      for (let i = 1; i < spans.length; i++) assert.ok(spans[i]!.off >= spans[i - 1]!.end, `${l.name}: ${spans[i - 1]!.name} overlaps ${spans[i]!.name}`);
      assert.ok(spans[spans.length - 1]!.end <= l.size, `${l.name} overruns`);
    }
  });

  it('use the ioctl request numbers of <linux/kvm.h>', () => {
    // _IOW/_IOR encode the struct size: a wrong size here is a wrong request.
    const size = (req: number) => (req >>> 16) & 0x3fff;
    assert.equal(size(ioc.KVM_SET_REGS), s.kvmRegs.size);
    assert.equal(size(ioc.KVM_GET_SREGS), s.kvmSregs.size);
    assert.equal(size(ioc.KVM_SET_FPU), s.kvmFpu.size);
    assert.equal(size(ioc.KVM_SET_USER_MEMORY_REGION), s.kvmUserspaceMemoryRegion.size);
    assert.equal(size(ioc.KVM_IRQFD), s.kvmIrqfd.size);
    assert.equal(size(ioc.KVM_IOEVENTFD), s.kvmIoeventfd.size);
    assert.equal(size(ioc.KVM_CREATE_PIT2), s.kvmPitConfig.size);
    assert.equal(size(ioc.KVM_GET_LAPIC), s.KVM_LAPIC_STATE_SIZE);
    assert.equal(size(ioc.KVM_GET_IRQCHIP), s.kvmIrqchip.size);
    assert.equal(size(ioc.KVM_GET_CLOCK), s.kvmClockData.size);
    assert.equal(size(ioc.KVM_GET_VCPU_EVENTS), s.KVM_VCPU_EVENTS_SIZE);
    assert.equal(size(ioc.KVM_GET_XCRS), s.KVM_XCRS_SIZE);
    assert.equal(size(ioc.KVM_GET_DEBUGREGS), s.KVM_DEBUGREGS_SIZE);
    assert.equal(size(ioc.KVM_GET_PIT2), s.KVM_PIT_STATE2_SIZE);
    assert.equal(ioc.KVM_RUN, 0xae80);
    assert.equal(ioc.KVM_CREATE_VM, 0xae01);
  });

  it('round-trip registers through real KVM: what we write is what KVM reads back', () => {
    requireKvm();
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    vm.createPlatform(0xfffbd000);
    const vcpu = new VcpuFd(vm.createVcpu(0), 0);
    try {
      const regs = { rax: 1n, rbx: 2n, rcx: 3n, rdx: 4n, rsi: 0x7000n, rdi: 6n, rsp: 0x8ff0n, rbp: 0x8ff0n, r8: 8n, r9: 9n, r10: 10n, r11: 11n, r12: 12n, r13: 13n, r14: 14n, r15: 0xffff_ffff_ffff_fff0n, rip: 0x100200n, rflags: 0x2n };
      vcpu.setRegs(regs);
      assert.deepEqual(vcpu.getRegs(), regs);
      const sregs = vcpu.getSregs();
      sregs.cr3 = 0x9000n;
      sregs.gdt = { base: 0x500n, limit: 31 };
      sregs.cs = { ...sregs.cs, base: 0n, selector: 0x1234 };
      vcpu.setSregs(sregs);
      const back = vcpu.getSregs();
      assert.equal(back.cr3, 0x9000n);
      assert.deepEqual(back.gdt, { base: 0x500n, limit: 31 });
      assert.equal(back.cs.selector, 0x1234);
      const msrs = vcpu.getMsrs([0x10, 0x174]);
      assert.deepEqual(msrs.map((m) => m.index), [0x10, 0x174]);
      assert.ok(kvm.supportedCpuid().some((e) => e.function === 1), 'CPUID leaf 1 is supported');
      assert.ok(kvm.msrIndexList().includes(0x10), 'the TSC MSR is in the MSR index list');
    } finally {
      vcpu.close();
      vm.close();
      kvm.close();
    }
  });
});
