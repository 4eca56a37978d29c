import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseKernelImage, readKernelImage } from '../../vmm/boot/bzimage.js';
import { classifyKernel, probeHost, probeKvmApi, refuseLinuxOnPvm } from '../../vmm/host-probe.js';
import { projectRoot } from '../../src/util/project-root.js';
import { debianLinuxGuest } from './boot/debian-kernel.js';
import { syntheticBzImage } from './boot/synthetic-bzimage.js';

/** `lifeboat ARGS` from the project root, running the CLI compiled next to this test. */
function lifeboat(...args: string[]) {
  const main = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
  const r = spawnSync(process.execPath, [main, ...args], { cwd: projectRoot(), encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const thisHostIsPvm = existsSync('/sys/module/kvm_pvm');

describe('host probe', () => {
  let fake: string;
  before(() => {
    fake = mkdtempSync(join(tmpdir(), 'lifeboat-host-'));
  });
  after(() => rmSync(fake, { recursive: true, force: true }));

  /** A fabricated /sys/module, /proc/cpuinfo and /proc/meminfo standing in for a host of another kind. */
  function fakeHost(name: string, opts: { modules: string[]; flags: string; cpus: number; device: boolean }) {
    const root = join(fake, name);
    mkdirSync(join(root, 'module'), { recursive: true });
    for (const m of opts.modules) mkdirSync(join(root, 'module', m));
    const cpuinfo = Array.from({ length: opts.cpus }, (_, i) => `processor\t: ${i}\nflags\t\t: fpu ${opts.flags} sse2\n`).join('\n');
    writeFileSync(join(root, 'cpuinfo'), cpuinfo);
    writeFileSync(join(root, 'meminfo'), 'MemTotal:       16384000 kB\nMemFree:         1000000 kB\nMemAvailable:    8192000 kB\n');
    if (opts.device) writeFileSync(join(root, 'kvm'), '');
    return { kvmDevice: join(root, 'kvm'), sysModuleDir: join(root, 'module'), cpuinfo: join(root, 'cpuinfo'), meminfo: join(root, 'meminfo') };
  }

  it('recognises this machine: /dev/kvm usable, PVM exactly when the kvm_pvm module is loaded', () => {
    const host = probeHost();
    assert.equal(host.kvm.present, true, '/dev/kvm is required on this project\'s machines');
    assert.equal(host.kvm.accessible, true);
    assert.equal(host.flavour === 'pvm', thisHostIsPvm);
    assert.equal(host.kvmModules.includes('kvm_pvm'), thisHostIsPvm);
    assert.ok(host.cpuCount >= 1);
    assert.ok(host.memoryAvailableBytes > 0 && host.memoryAvailableBytes <= host.memoryTotalBytes);
  });

  it('calls a fabricated VT-x host (kvm_intel, vmx flag) hardware virtualization', () => {
    const host = probeHost(fakeHost('vtx', { modules: ['kvm', 'kvm_intel'], flags: 'vmx ept', cpus: 8, device: true }));
    assert.equal(host.flavour, 'hardware');
    assert.equal(host.cpuVirtualization, 'vmx');
    assert.deepEqual(host.kvmModules, ['kvm_intel']);
    assert.equal(host.cpuCount, 8);
    assert.equal(host.memoryTotalBytes, 16384000 * 1024);
    assert.equal(host.memoryAvailableBytes, 8192000 * 1024);
  });

  it('calls a fabricated host with kvm_pvm PVM even if the CPU shows svm, and a host without /dev/kvm none', () => {
    assert.equal(probeHost(fakeHost('pvm', { modules: ['kvm', 'kvm_pvm'], flags: 'svm', cpus: 2, device: true })).flavour, 'pvm');
    const none = probeHost(fakeHost('none', { modules: [], flags: '', cpus: 1, device: false }));
    assert.equal(none.flavour, 'none');
    assert.equal(none.kvm.present, false);
  });

  it('answers KVM API questions on /dev/kvm: version 12, the required capabilities, vCPU limits, TSC kHz', () => {
    const api = probeKvmApi();
    assert.equal(api.apiVersion, 12);
    const missing = api.capabilities.filter((c) => c.required && c.value <= 0);
    assert.deepEqual(missing, []);
    assert.ok(api.maxVcpus >= api.recommendedVcpus && api.recommendedVcpus >= 1);
    assert.ok(api.tscKhz !== undefined && api.tscKhz > 100_000, `TSC ${api.tscKhz} kHz`);
  });

  describe('which guest a kernel image is', () => {
    it("takes Debian's kernel for Linux and the Lifeboat guest's for ours", () => {
      assert.equal(classifyKernel(readKernelImage(debianLinuxGuest().kernel)), 'linux');
      const bin = join(projectRoot(), 'guest/build/lifeboat-guest.bin');
      assert.ok(existsSync(bin), `${bin} is missing: build it with 'make -C guest'`);
      assert.equal(classifyKernel(readKernelImage(bin)), 'lifeboat-guest');
      assert.equal(refuseLinuxOnPvm(readKernelImage(bin), { flavour: 'pvm' }), undefined);
      assert.equal(classifyKernel(parseKernelImage(syntheticBzImage({ kernelVersion: 'lifeboat-guest 0.1.0' }))), 'lifeboat-guest');
      assert.equal(classifyKernel(parseKernelImage(syntheticBzImage())), 'unknown');
    });

    it('refuses Linux on PVM with one line naming PVM and the way out, and nothing else', () => {
      const linux = readKernelImage(debianLinuxGuest().kernel);
      const message = refuseLinuxOnPvm(linux, { flavour: 'pvm' });
      assert.ok(message);
      assert.match(message, /PVM/);
      assert.match(message, /kvm_pvm/);
      assert.match(message, /Lifeboat guest/);
      assert.match(message, /VT-x\/AMD-V/);
      assert.ok(!message.includes('\n'));
      assert.equal(refuseLinuxOnPvm(linux, { flavour: 'hardware' }), undefined);
      const ours = parseKernelImage(syntheticBzImage({ kernelVersion: 'lifeboat-guest 0.1.0' }));
      assert.equal(refuseLinuxOnPvm(ours, { flavour: 'pvm' }), undefined);
    });
  });
});

describe('lifeboat doctor', () => {
  it('reports the KVM flavour, API version, capabilities, limits and what runs here (--json)', () => {
    const r = lifeboat('doctor', '--json');
    assert.equal(r.status, 0, r.stderr);
    const report = JSON.parse(r.stdout);
    assert.equal(report.kvm.flavour, thisHostIsPvm ? 'pvm' : 'hardware');
    assert.equal(report.kvm.apiVersion, 12);
    assert.ok(report.kvm.tscKhz > 0);
    assert.ok(report.kvm.maxVcpus >= 1);
    const irqchip = report.kvm.capabilities.find((c: { name: string }) => c.name === 'IRQCHIP');
    assert.deepEqual(irqchip, { name: 'IRQCHIP', value: 1, required: true });
    assert.ok(report.host.cpus >= 1 && report.host.memoryTotalBytes > 0);
    assert.equal(report.verdict.lifeboatGuest.runs, 'yes');
    assert.equal(report.verdict.linuxGuests.runs, thisHostIsPvm ? 'no' : 'yes');
    if (thisHostIsPvm) assert.match(report.verdict.linuxGuests.reason, /needs hardware virtualization/);
  });

  it('prints the same as readable lines', () => {
    const r = lifeboat('doctor');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^KVM flavour +(PVM \(module kvm_pvm|hardware virtualization)/m);
    assert.match(r.stdout, /^KVM API +12$/m);
    assert.match(r.stdout, /^ {2}IRQCHIP +yes$/m);
    assert.match(r.stdout, /^vCPU limits +recommended \d+ \(KVM_CAP_NR_VCPUS\), max \d+ \(KVM_CAP_MAX_VCPUS\)$/m);
    assert.match(r.stdout, /^TSC +\d+ kHz$/m);
    assert.match(r.stdout, /^ {2}Lifeboat guest: yes/m);
    assert.match(r.stdout, thisHostIsPvm ? /^ {2}Linux guests: no \(needs hardware virtualization/m : /^ {2}Linux guests: yes/m);
  });

  it('says whether a given kernel runs here, and names a wrong file in one line', () => {
    const linux = lifeboat('doctor', '--kernel', debianLinuxGuest().kernel);
    assert.equal(linux.status, thisHostIsPvm ? 1 : 0);
    if (thisHostIsPvm) assert.match(linux.stdout, /\(linux, \d+\.\d+\.\d+[^)]*\): no \(this host's \/dev\/kvm is PVM/);
    const elf = lifeboat('doctor', '--kernel', process.execPath);
    assert.equal(elf.status, 1);
    assert.equal(elf.stderr.trim().split('\n').length, 1);
    assert.match(elf.stderr, /^lifeboat doctor: .* is an ELF file \(vmlinux or lifeboat-guest\.elf\), not a bzImage/);
  });

  it('rejects unknown options with usage status 2', () => {
    const r = lifeboat('doctor', '--bogus');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^lifeboat doctor: /);
  });
});
