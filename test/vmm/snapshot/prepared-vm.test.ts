// The KVM VM a warm standby makes ahead of a restore (vmm/snapshot/prepared-vm.ts): used only by memory
// of the size it was made for, and released completely when no restore uses it.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { PreparedVm } from '../../../vmm/snapshot/prepared-vm.js';
import { requireKvm } from '../../helpers/vmm.js';

const MiB = 2 ** 20;

/** Open KVM VM fds of this process (anon_inode:kvm-vm). */
function kvmVmFds(): number {
  return readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:kvm-vm';
    } catch {
      return false; // the directory's own fd, closed since
    }
  }).length;
}

/** Whether a mapping of this process starts at `address`. */
function mapped(address: bigint): boolean {
  const hex = address.toString(16);
  return readFileSync('/proc/self/maps', 'utf8').split('\n').some((l) => l.startsWith(`${hex}-`));
}

describe('a VM prepared ahead of a restore (real KVM)', () => {
  before(() => requireKvm());

  it('is claimed only for memory of its size, once; unused, it releases its VM and its address range', () => {
    const before = kvmVmFds();
    const prepared = PreparedVm.create(64 * MiB);
    assert.equal(kvmVmFds(), before + 1, 'the VM exists while the standby waits');
    assert.ok(mapped(prepared.hostAddress), 'guest memory\'s address range is reserved');
    assert.equal(prepared.usable, true);
    assert.equal(prepared.claimMemory(128 * MiB), undefined, 'a snapshot of another size does not use it');
    assert.equal(prepared.take(prepared.hostAddress, 64 * MiB), undefined, 'no VM before its memory is mapped over the reservation');
    prepared.close();
    assert.equal(kvmVmFds(), before, 'the VM is closed');
    assert.equal(mapped(prepared.hostAddress), false, 'the reservation is unmapped');
    assert.equal(prepared.usable, false);
    assert.equal(prepared.claimMemory(64 * MiB), undefined, 'a closed one is never used');
    prepared.close(); // idempotent
  });

  it('once claimed, hands its VM over for memory mapped at its address and leaves that range to the mapping', () => {
    const before = kvmVmFds();
    const prepared = PreparedVm.create(64 * MiB);
    const at = prepared.claimMemory(64 * MiB);
    assert.equal(at, prepared.hostAddress);
    assert.equal(prepared.claimMemory(64 * MiB), undefined, 'claimed once');
    assert.equal(prepared.take(at! + 4096n, 64 * MiB), undefined, 'memory elsewhere does not get it');
    const taken = prepared.take(at!, 64 * MiB);
    assert.ok(taken);
    prepared.close();
    assert.equal(kvmVmFds(), before + 1, 'a taken VM is its new owner\'s to close');
    assert.ok(mapped(at!), 'the range belongs to the mapping made over it');
    taken.vm.close();
    taken.kvm.close();
    assert.equal(kvmVmFds(), before);
  });
});
