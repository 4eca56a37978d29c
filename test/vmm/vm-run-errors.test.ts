// `lifeboat vm run` refusing bad input: one clear line, a non-zero exit, and the disk image untouched.
// Tiny hand-assembled kernels (valid bzImage layout) stand in for guests that misbehave on purpose.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmodSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { projectRoot } from '../../src/util/project-root.js';
import { requireKvm, runVm, tempDir, tinyKernel, X86, type VmExit } from '../helpers/vmm.js';

function oneLineError(exit: VmExit, pattern: RegExp): void {
  assert.notEqual(exit.code, 0, `expected a failure, got status 0; stderr: ${exit.stderr}`);
  const lines = exit.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${exit.stderr}`);
  assert.match(lines[0]!, /^lifeboat vm run: /);
  assert.match(lines[0]!, pattern);
}

describe('lifeboat vm run: bad input and failing guests', function () {
  this.timeout(120_000);
  let dir: ReturnType<typeof tempDir>;
  let okKernel: string;
  let disk: string;
  let diskDigest: string;
  let diskMtime: number;

  const digest = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

  before(() => {
    requireKvm();
    dir = tempDir();
    okKernel = join(dir.path, 'ok.bin');
    writeFileSync(okKernel, tinyKernel([...X86.print('tiny kernel\n'), ...X86.exit(3)]));
    disk = join(dir.path, 'disk.img');
    writeFileSync(disk, Buffer.alloc(1 << 20, 0x5a));
    diskDigest = digest(disk);
    diskMtime = statSync(disk).mtimeMs;
  });
  after(() => dir.remove());
  afterEach(() => {
    assert.equal(digest(disk), diskDigest, 'the disk image was not written');
    assert.equal(statSync(disk).mtimeMs, diskMtime, 'the disk image was not touched');
  });

  it('boots a kernel and exits with the status it writes to the exit port', async () => {
    const exit = await runVm(['--kernel', okKernel, '--disk', `${disk},ro`]);
    assert.equal(exit.code, 3, exit.stderr);
    assert.equal(exit.stdout, 'tiny kernel\n');
  });

  it('no KVM device: says the host has no KVM', async () => {
    oneLineError(await runVm(['--kernel', okKernel, '--disk', disk], { env: { LIFEBOAT_KVM_DEVICE: join(dir.path, 'no-kvm') } }), /does not exist: this host has no KVM/);
  });

  it('a KVM device path that is not KVM: says so', async () => {
    oneLineError(await runVm(['--kernel', okKernel, '--disk', disk], { env: { LIFEBOAT_KVM_DEVICE: '/dev/null' } }), /\/dev\/null is not a KVM device/);
  });

  it('no permission on the KVM device (needs a non-root user: as root the check is bypassed, so a mode-000 copy still opens)', async function () {
    const node = join(dir.path, 'kvm-000');
    execFileSync('mknod', [node, 'c', '10', '232']);
    chmodSync(node, 0o000);
    const exit = await runVm(['--kernel', okKernel, '--disk', disk], { env: { LIFEBOAT_KVM_DEVICE: node } });
    if (process.getuid?.() === 0) assert.equal(exit.code, 3, `root opens a mode-000 device node: ${exit.stderr}`);
    else oneLineError(exit, /permission denied opening .*kvm-000: add your user to the 'kvm' group/);
  });

  it('missing kernel image', async () => {
    oneLineError(await runVm(['--kernel', join(dir.path, 'nope.bin'), '--disk', disk]), /kernel image .*nope\.bin does not exist/);
  });

  it('a file that is not a kernel image', async () => {
    oneLineError(await runVm(['--kernel', disk, '--disk', disk]), /is not a bzImage/);
  });

  it('missing disk image', async () => {
    oneLineError(await runVm(['--kernel', okKernel, '--disk', join(dir.path, 'missing.img')]), /disk image .*missing\.img does not exist/);
  });

  it('disk size not a multiple of 512', async () => {
    const odd = join(dir.path, 'odd.img');
    writeFileSync(odd, '');
    truncateSync(odd, 1000);
    oneLineError(await runVm(['--kernel', okKernel, '--disk', disk, '--disk', odd]), /odd\.img is 1000 bytes, not a multiple of 512/);
    assert.equal(statSync(odd).size, 1000);
  });

  it('more memory than the host can give', async () => {
    oneLineError(await runVm(['--kernel', okKernel, '--disk', disk, '--mem', String(64 * 1024 * 1024)]), /--mem 67108864 MiB is more than this host can give/);
  });

  it('more memory than this VMM supports (a single guest-memory view stops below 4 GiB)', async () => {
    oneLineError(await runVm(['--kernel', okKernel, '--disk', disk, '--mem', '5000']), /--mem 5000 MiB is more than this VMM supports: at most 4094 MiB/);
  });

  it('vcpus below 1', async () => {
    oneLineError(await runVm(['--kernel', okKernel, '--disk', disk, '--vcpus', '0']), /--vcpus must be a whole number of at least 1/);
  });

  it('vcpus above the limit', async () => {
    oneLineError(await runVm(['--kernel', okKernel, '--disk', disk, '--vcpus', '5000']), /--vcpus 5000 is too many/);
  });

  it('a guest that never reaches its shell: boot timeout naming the last console line', async () => {
    // Announces itself as the Lifeboat guest (header kernel_version), prints, never shows its prompt.
    const stuck = join(dir.path, 'stuck.bin');
    writeFileSync(stuck, tinyKernel([...X86.print('lifeboat: guest starting\nprobing disks'), ...X86.hang], 'lifeboat-guest (stuck test kernel)'));
    oneLineError(await runVm(['--kernel', stuck, '--disk', disk, '--boot-timeout', '2'], { timeoutMs: 30_000 }), /the guest did not reach its shell within 2 s \(last console line: "probing disks"\)/);
  });

  it('a silent guest: boot timeout says the console stayed silent', async () => {
    const silent = join(dir.path, 'hang.bin');
    writeFileSync(silent, tinyKernel([...X86.hang]));
    oneLineError(await runVm(['--kernel', silent, '--disk', disk, '--boot-timeout', '1'], { timeoutMs: 30_000 }), /did not reach its shell within 1 s \(last console line: none, the console stayed silent\)/);
  });

  it('a KVM internal error reports the exit, the RIP and the instruction bytes (PVM cannot emulate cmpxchg16b)', async () => {
    const k = join(dir.path, 'cx16.bin');
    writeFileSync(k, tinyKernel([...X86.print('about to fail\n'), ...X86.cmpxchg16b, ...X86.exit(0)]));
    const exit = await runVm(['--kernel', k, '--disk', disk]);
    oneLineError(exit, /KVM internal error \(exit INTERNAL_ERROR \(17\), emulation failure\) on vCPU 0 at RIP 0x[0-9a-f]+, instruction bytes f0 48 0f c7 0c 24/);
    assert.match(exit.stdout, /about to fail/);
  });

  it('a triple fault is reported with its RIP and instruction bytes', async () => {
    const k = join(dir.path, 'ud2.bin');
    writeFileSync(k, tinyKernel([...X86.ud2]));
    oneLineError(await runVm(['--kernel', k, '--disk', disk]), /the guest triple-faulted \(exit SHUTDOWN \(8\)\) on vCPU 0 at RIP 0x100200, instruction bytes 0f 0b/);
  });

  it('a stock Linux kernel on this PVM host is refused with the reason', async () => {
    const out = execFileSync('bash', [join(projectRoot(), 'scripts', 'linux-guest.sh')], { encoding: 'utf8', timeout: 600_000 });
    const kernel = /^KERNEL=(.*)$/m.exec(out)![1]!;
    const initrd = /^INITRD=(.*)$/m.exec(out)![1]!;
    oneLineError(await runVm(['--kernel', kernel, '--initrd', initrd, '--disk', disk]), /this host's \/dev\/kvm is PVM .* stock Linux kernels \(this one is 6\.[^)]*\) do not boot on it/);
  });
});
