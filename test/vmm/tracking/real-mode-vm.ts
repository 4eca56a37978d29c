// A one-vCPU KVM VM running hand-placed real-mode code on the test's thread, with dirty logging on
// its memory slot: enough to make the guest CPU (not the VMM) write chosen pages, and to have real
// vCPU and VM state to snapshot. The code ends with an OUT, which always returns to us.
import * as ioc from '../../../vmm/kvm/ioctls.js';
import { kvmRun } from '../../../vmm/kvm/structs.js';
import { Kvm } from '../../../vmm/kvm/system.js';
import { VcpuFd } from '../../../vmm/kvm/vcpu.js';
import type { VmFd } from '../../../vmm/kvm/vm.js';
import { GuestMemory } from '../../../vmm/memory.js';
import { KVM_TSS_ADDR } from '../../../vmm/layout.js';
import * as libc from '../../../vmm/sys/libc.js';
import { loadVcpuState, saveVcpuState, type VcpuState } from '../../../vmm/vcpu-state.js';
import { enableDirtyLogging, type DirtyLogMode } from '../../../vmm/tracking/dirty-memory.js';

export const CODE_ADDR = 0x1000;
/**
 * es = ax; repeat cx times { byte [es:0] = 1; es += 0x100 (4 KiB) }; out 0xf4.
 * So AX = first page * 0x100, CX = page count.
 */
const WRITE_PAGES_CODE = Buffer.from([
  0x8e, 0xc0, // mov es, ax
  0x26, 0xc6, 0x06, 0x00, 0x00, 0x01, // loop: mov byte [es:0], 1
  0x8c, 0xc2, // mov dx, es
  0x81, 0xc2, 0x00, 0x01, // add dx, 0x100
  0x8e, 0xc2, // mov es, dx
  0x49, // dec cx
  0x75, 0xef, // jnz loop
  0xe6, 0xf4, // out 0xf4, al: exits to us whether or not there is an in-kernel irqchip
]);

export class RealModeVm {
  private constructor(
    readonly kvm: Kvm,
    readonly vm: VmFd,
    readonly memory: GuestMemory,
    readonly mode: DirtyLogMode,
    private readonly vcpu: VcpuFd,
    private readonly run: Uint8Array,
    private readonly runAddress: bigint,
    private readonly runSize: number,
  ) {}

  /** `memory`: run over existing guest memory (a restored snapshot) instead of fresh zeroed RAM. */
  static create(memorySize = 2 * 1024 * 1024, manualProtect = true, existing?: GuestMemory): RealModeVm {
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    vm.createPlatform(KVM_TSS_ADDR);
    const mode = manualProtect ? enableDirtyLogging(vm) : 'get-and-clear';
    const memory = existing ?? GuestMemory.create(memorySize);
    vm.mapMemory(memory.regions, memory.shared.hostAddress, true);
    const vcpu = new VcpuFd(vm.createVcpu(0), 0);
    const runSize = kvm.vcpuMmapSize();
    const runAddress = libc.mmap(runSize, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, vcpu.fd);
    const sregs = vcpu.getSregs();
    sregs.cs = { ...sregs.cs, base: 0n, selector: 0 };
    vcpu.setSregs(sregs);
    if (!existing) memory.write(CODE_ADDR, WRITE_PAGES_CODE);
    return new RealModeVm(kvm, vm, memory, mode, vcpu, libc.view(runAddress, runSize), runAddress, runSize);
  }

  /** The guest CPU writes one byte into each of `count` pages from guest page `firstPage` (< 0x100). */
  writePages(firstPage: number, count: number): void {
    if (firstPage + count > 0x9f || firstPage <= CODE_ADDR / 4096) throw new RangeError('pages must lie in (0x1, 0x9f)');
    this.vcpu.setRegs({ rip: BigInt(CODE_ADDR), rflags: 2n, rax: BigInt(firstPage * 0x100), rcx: BigInt(count) });
    this.runToOut();
  }

  /** Starts the code at `ip` (real mode, CS base 0). */
  jump(ip: number): void {
    this.vcpu.setRegs({ rip: BigInt(ip), rflags: 2n });
  }

  /** Runs the vCPU from where it is until the guest executes an OUT. */
  runToOut(): void {
    for (;;) {
      const ret = libc.ioctlRaw(this.vcpu.fd, ioc.KVM_RUN, 0);
      if (ret < 0 && libc.errno() === libc.EINTR) continue;
      if (ret < 0) throw new libc.SysError('KVM_RUN', libc.errno());
      const reason = Buffer.from(this.run.buffer, this.run.byteOffset).readUInt32LE(kvmRun.fields.exit_reason[0]);
      if (reason === ioc.KVM_EXIT_IO) return;
      throw new Error(`unexpected exit ${ioc.EXIT_REASON_NAMES[reason] ?? reason}`);
    }
  }

  /** The vCPU's full state, as the VMM saves it for a snapshot. */
  saveVcpu(): VcpuState {
    return saveVcpuState(this.vcpu, this.kvm.msrIndexList(), this.kvm.xsave2Size());
  }

  /** Loads a saved vCPU state, as the VMM does when it resumes a snapshot. */
  loadVcpu(state: VcpuState): void {
    loadVcpuState(this.vcpu, state);
  }

  close(): void {
    libc.munmap(this.runAddress, this.runSize);
    this.vcpu.close();
    this.vm.close();
    this.memory.close();
    this.kvm.close();
  }
}
