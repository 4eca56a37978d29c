// The guest's console driver fills the 16550A's transmit FIFO (up to 16 bytes per "THR empty") instead of
// polling the line status before every byte. Whatever the guest prints must still arrive complete and in
// order, under our VMM and under QEMU alike, up to the very last line before a poweroff.
import assert from 'node:assert/strict';
import { runQemu } from '../helpers/qemu.js';
import { guestImage, requireKvm, runVm } from '../helpers/vmm.js';

/** Lines that depend on the VMM or on time (entry path, boot time, TSC) are left out of the comparison. */
function comparable(output: string): string {
  return output.replace(/\r/g, '').split('\n').filter((l) => !/^lifeboat: guest starting |^lifeboat: ready in |^info cpus=/.test(l)).join('\n');
}

describe('the guest console under our VMM and under QEMU', function () {
  this.timeout(120_000);
  before(() => {
    requireKvm();
    guestImage();
  });

  it('long output written in FIFO bursts arrives complete and in order, right up to the poweroff line', async () => {
    const exec = 'help; info; help; poweroff 7';
    const ours = await runVm(['--boot-timeout', '60', '--mem', '128', '--exec', exec]);
    assert.equal(ours.code, 7, ours.stderr);
    const qemu = await runQemu({ accel: 'kvm', cpus: 1, memoryMiB: 128, exec });
    assert.equal(qemu.guestStatus, 7, qemu.output);
    const text = comparable(ours.stdout);
    assert.match(text, /lifeboat: poweroff status=7\n?$/, 'the last line before the poweroff is there');
    assert.ok((text.match(/poweroff \[STATUS\]/g) ?? []).length === 2, 'both help texts arrived');
    assert.equal(text, comparable(qemu.output), 'byte for byte what QEMU shows');
  });
});
