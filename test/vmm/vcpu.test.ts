// The vCPU exit path without any guest image: a few bytes of real-mode code placed in guest memory,
// run on a vCPU worker thread, their port I/O dispatched to our devices.
import assert from 'node:assert/strict';
import { readSync } from 'node:fs';
import { ACPI_POWER_OFF_VALUE } from '../../vmm/acpi/tables.js';
import { platformDescriptors } from '../../vmm/devices/descriptor.js';
import { allocateSerialState } from '../../vmm/devices/serial.js';
import { Kvm } from '../../vmm/kvm/system.js';
import type { VmFd } from '../../vmm/kvm/vm.js';
import { COM1_GSI, KVM_TSS_ADDR } from '../../vmm/layout.js';
import { GuestMemory } from '../../vmm/memory.js';
import * as libc from '../../vmm/sys/libc.js';
import { EVENT_POWEROFF } from '../../vmm/vcpu-control.js';
import { VcpuSet, type MachineEvent } from '../../vmm/vcpus.js';
import { requireKvm } from '../helpers/vmm.js';

const CODE_ADDR = 0x1000;

/** A VM with 16 MiB, COM1 on a pipe and the exit port, running `code` in real mode at 0:0x1000. */
async function realModeVm(code: number[], vcpus = 1) {
  requireKvm();
  const kvm = Kvm.open();
  const vm: VmFd = kvm.createVm();
  vm.createPlatform(KVM_TSS_ADDR);
  const memory = GuestMemory.create(16 << 20);
  vm.mapMemory(memory.regions, memory.shared.hostAddress, true);
  memory.write(CODE_ADDR, Uint8Array.from(code));
  const [consoleRead, consoleWrite] = libc.pipe(libc.O_CLOEXEC);
  const irq = libc.eventfd();
  vm.registerIrqfd(COM1_GSI, irq);
  let resolveEvent!: (e: MachineEvent) => void;
  const event = new Promise<MachineEvent>((r) => (resolveEvent = r));
  const supportedCpuid = kvm.supportedCpuid();
  const set = VcpuSet.create(kvm, vm, vcpus, () => ({ kind: 'real-mode', ip: CODE_ADDR, supportedCpuid, vcpuCount: vcpus }));
  await set.start({
    memory,
    devices: platformDescriptors(allocateSerialState(), consoleWrite, irq, ACPI_POWER_OFF_VALUE),
    onEvent: resolveEvent,
  });
  return {
    set, vm, memory, event,
    console(): string {
      const buf = Buffer.alloc(256);
      return buf.subarray(0, readSync(consoleRead, buf)).toString();
    },
    async close() {
      await set.stop();
      for (const fd of [consoleRead, consoleWrite, irq]) libc.close(fd);
      memory.close();
      vm.close();
      kvm.close();
    },
  };
}

// Real-mode machine code.
const printA = [0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee, 0xb0, 0x0a, 0xee]; // mov dx,0x3f8; mov al,'A'; out dx,al; mov al,10; out dx,al
const exit42 = [0x66, 0xb8, 42, 0, 0, 0, 0x66, 0xe7, 0xf4, 0xf4]; // mov eax,42; out 0xf4,eax; hlt
const spin = [0x66, 0x40, 0xeb, 0xfc]; // l: inc eax; jmp l

describe('vCPU threads', function () {
  this.timeout(30_000);

  it('run guest code on a worker: serial output reaches the console pipe, the exit port powers off with its status', async () => {
    const vm = await realModeVm([...printA, ...exit42]);
    try {
      vm.set.resume();
      const e = await vm.event;
      assert.equal(e.kind, EVENT_POWEROFF);
      assert.equal(e.status, 42);
      assert.equal(vm.console(), 'A\n');
    } finally {
      await vm.close();
    }
  });

  it('pause a spinning vCPU out of KVM_RUN, let its state be read on its own thread, and resume it', async () => {
    const vm = await realModeVm(spin);
    try {
      // Run until the counter moved: on a loaded host a worker may not get the CPU within any fixed time.
      const runAWhile = async () => {
        vm.set.resume();
        await new Promise((r) => setTimeout(r, 50));
        await vm.set.pause();
      };
      await runAWhile();
      for (let i = 0; i < 100 && (await vm.set.saveStates())[0]!.regs.rax === 0n; i++) await runAWhile();
      const [first] = await vm.set.saveStates();
      await new Promise((r) => setTimeout(r, 50));
      const [still] = await vm.set.saveStates();
      assert.equal(still!.regs.rax, first!.regs.rax, 'a paused vCPU does not run');
      assert.ok(first!.regs.rax > 0n, 'the vCPU ran before the pause');
      assert.ok(first!.regs.rip >= BigInt(CODE_ADDR) && first!.regs.rip < BigInt(CODE_ADDR + spin.length));
      assert.equal(first!.msrs.length > 10, true, 'MSRs saved');
      await runAWhile();
      for (let i = 0; i < 100 && (await vm.set.saveStates())[0]!.regs.rax === first!.regs.rax; i++) await runAWhile();
      const [later] = await vm.set.saveStates();
      assert.ok(later!.regs.rax > first!.regs.rax, 'it runs again after resume');
      // Load the first state back: the counter goes back in time.
      await vm.set.loadStates([first!]);
      const [reloaded] = await vm.set.saveStates();
      assert.equal(reloaded!.regs.rax, first!.regs.rax);
    } finally {
      await vm.close();
    }
  });

  it('stop every vCPU of a multi-vCPU VM, including ones waiting for SIPI', async () => {
    const vm = await realModeVm(spin, 2);
    vm.set.resume();
    await new Promise((r) => setTimeout(r, 20));
    await vm.close();
  });

  it('track the pages a guest writes through KVM\'s dirty log', async () => {
    // mov ax,0x2000; mov ds,ax; mov byte [0x10],1; (page 0x20010) then exit
    const vm = await realModeVm([0xb8, 0x00, 0x20, 0x8e, 0xd8, 0xc6, 0x06, 0x10, 0x00, 0x01, ...exit42]);
    try {
      vm.vm.getDirtyLog(0, (16 << 20) / 4096); // clear what loading the code did
      vm.set.resume();
      await vm.event;
      const bitmap = vm.vm.getDirtyLog(0, (16 << 20) / 4096);
      const page = 0x20010 >> 12;
      assert.equal((bitmap[page >> 6]! >> BigInt(page & 63)) & 1n, 1n);
    } finally {
      await vm.close();
    }
  });
});
