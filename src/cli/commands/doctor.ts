import { parseArgs } from 'node:util';
import { readKernelImage } from '../../../vmm/boot/bzimage.js';
import { BootError } from '../../../vmm/boot/errors.js';
import {
  classifyKernel,
  probeHost,
  probeKvmApi,
  refuseLinuxOnPvm,
  type GuestKernelKind,
  type HostInfo,
  type KvmApiInfo,
} from '../../../vmm/host-probe.js';
import { KVM_API_VERSION } from '../../../vmm/kvm/ioctls.js';
import { UsageError, UserError, type Command } from '../command.js';

const help = `Usage: lifeboat doctor [--kernel IMAGE] [--json]

Check what this host offers Lifeboat's VMM: the KVM device and its flavour (PVM, i.e. KVM without
hardware virtualization, or VT-x/AMD-V), the KVM API version, the KVM capabilities Lifeboat relies on,
vCPU limits, host CPUs and memory, and the TSC frequency. Ends with what runs here:
  Lifeboat guest   needs /dev/kvm with every required capability
  Linux guests     need hardware virtualization (stock Linux does not boot on PVM)

Options:
  --kernel IMAGE   also say whether this kernel image (a bzImage) can boot here
  --json           print the report as JSON

Exit status: 0 when this host can run Lifeboat VMs (and IMAGE, if given), 1 otherwise.`;

type Verdict = { runs: 'yes' | 'no' | 'unknown'; reason: string };

export interface DoctorReport {
  kvm: {
    path: string;
    present: boolean;
    accessible: boolean;
    flavour: HostInfo['flavour'];
    modules: readonly string[];
    apiVersion: number | null;
    capabilities: { name: string; value: number; required: boolean }[];
    recommendedVcpus: number | null;
    maxVcpus: number | null;
    tscKhz: number | null;
    problem: string | null;
  };
  host: { cpus: number; memoryTotalBytes: number; memoryAvailableBytes: number; cpuVirtualization: string | null };
  verdict: { lifeboatGuest: Verdict; linuxGuests: Verdict };
  kernel?: { path: string; kind: GuestKernelKind; kernelVersion: string | null } & Verdict;
}

export const doctorCommand: Command = {
  path: ['doctor'],
  summary: 'check this host: KVM flavour (PVM or hardware), capabilities, limits, what guests run here',
  help,
  async run(argv) {
    let values;
    try {
      ({ values } = parseArgs({
        args: argv,
        options: { kernel: { type: 'string' }, json: { type: 'boolean', default: false } },
        strict: true,
        allowPositionals: false,
      }));
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    const report = buildReport(values.kernel);
    process.stdout.write(values.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
    const kernelOk = !report.kernel || report.kernel.runs !== 'no';
    return report.verdict.lifeboatGuest.runs === 'yes' && kernelOk ? 0 : 1;
  },
};

function buildReport(kernelPath: string | undefined): DoctorReport {
  const host = probeHost();
  let api: KvmApiInfo | undefined;
  let problem: string | null = null;
  if (!host.kvm.present) problem = `${host.kvm.path} does not exist: no KVM on this host (load kvm_intel/kvm_amd, or enable virtualization)`;
  else if (!host.kvm.accessible) problem = `no read/write access to ${host.kvm.path}: add your user to the 'kvm' group or run as root`;
  else {
    try {
      api = probeKvmApi(host.kvm.path);
    } catch (err) {
      problem = (err as Error).message;
    }
  }
  const lifeboatGuest = lifeboatVerdict(api, problem);
  const report: DoctorReport = {
    kvm: {
      path: host.kvm.path,
      present: host.kvm.present,
      accessible: host.kvm.accessible,
      flavour: host.flavour,
      modules: host.kvmModules,
      apiVersion: api?.apiVersion ?? null,
      capabilities: (api?.capabilities ?? []).map(({ name, value, required }) => ({ name, value, required })),
      recommendedVcpus: api?.recommendedVcpus ?? null,
      maxVcpus: api?.maxVcpus ?? null,
      tscKhz: api?.tscKhz ?? null,
      problem,
    },
    host: {
      cpus: host.cpuCount,
      memoryTotalBytes: host.memoryTotalBytes,
      memoryAvailableBytes: host.memoryAvailableBytes,
      cpuVirtualization: host.cpuVirtualization ?? null,
    },
    verdict: { lifeboatGuest, linuxGuests: linuxVerdict(host, lifeboatGuest) },
  };
  if (kernelPath !== undefined) report.kernel = kernelVerdict(kernelPath, host, report.verdict);
  return report;
}

function lifeboatVerdict(api: KvmApiInfo | undefined, problem: string | null): Verdict {
  if (!api) return { runs: 'no', reason: problem ?? 'KVM is not usable' };
  if (api.apiVersion !== KVM_API_VERSION) return { runs: 'no', reason: `KVM API version ${api.apiVersion}; Lifeboat needs ${KVM_API_VERSION}` };
  const missing = api.capabilities.filter((c) => c.required && c.value <= 0).map((c) => c.name);
  if (missing.length) return { runs: 'no', reason: `KVM lacks capabilities Lifeboat needs: ${missing.join(', ')}` };
  return { runs: 'yes', reason: 'KVM offers everything the VMM needs' };
}

function linuxVerdict(host: HostInfo, lifeboat: Verdict): Verdict {
  if (lifeboat.runs !== 'yes') return { runs: 'no', reason: lifeboat.reason };
  switch (host.flavour) {
    case 'hardware':
      return { runs: 'yes', reason: `hardware virtualization (${host.kvmModules.join(', ') || host.cpuVirtualization})` };
    case 'pvm':
      return { runs: 'no', reason: 'needs hardware virtualization (VT-x/AMD-V); this host\'s KVM is PVM (kvm_pvm), where stock Linux does not boot' };
    default:
      return { runs: 'unknown', reason: 'cannot tell whether KVM uses hardware virtualization (no kvm_intel/kvm_amd module, no vmx/svm CPU flag)' };
  }
}

function kernelVerdict(path: string, host: HostInfo, verdict: DoctorReport['verdict']): NonNullable<DoctorReport['kernel']> {
  let image;
  try {
    image = readKernelImage(path);
  } catch (err) {
    if (err instanceof BootError) throw new UserError(err.message);
    throw err;
  }
  const kind = classifyKernel(image);
  const base = { path, kind, kernelVersion: image.kernelVersion ?? null };
  const refusal = refuseLinuxOnPvm(image, host);
  if (refusal) return { ...base, runs: 'no', reason: refusal };
  const guestVerdict = kind === 'linux' ? verdict.linuxGuests : verdict.lifeboatGuest;
  return { ...base, ...guestVerdict };
}

function formatReport(r: DoctorReport): string {
  const lines: string[] = [];
  const row = (label: string, value: string) => lines.push(`${label.padEnd(14)}${value}`);
  const flavour = {
    pvm: 'PVM (module kvm_pvm: KVM without hardware virtualization)',
    hardware: `hardware virtualization (${r.kvm.modules.join(', ') || r.host.cpuVirtualization})`,
    unknown: 'unknown (no kvm_pvm, kvm_intel or kvm_amd module)',
    none: 'none',
  }[r.kvm.flavour];
  row('KVM device', `${r.kvm.path} (${r.kvm.present ? (r.kvm.accessible ? 'present, read/write' : 'present, NO ACCESS') : 'MISSING'})`);
  row('KVM flavour', flavour);
  if (r.kvm.problem) row('KVM problem', r.kvm.problem);
  if (r.kvm.apiVersion !== null) row('KVM API', `${r.kvm.apiVersion}${r.kvm.apiVersion === KVM_API_VERSION ? '' : ` (Lifeboat needs ${KVM_API_VERSION})`}`);
  if (r.kvm.maxVcpus !== null) row('vCPU limits', `recommended ${r.kvm.recommendedVcpus} (KVM_CAP_NR_VCPUS), max ${r.kvm.maxVcpus} (KVM_CAP_MAX_VCPUS)`);
  row('TSC', r.kvm.tscKhz !== null ? `${r.kvm.tscKhz} kHz` : 'unknown');
  row('Host', `${r.host.cpus} CPUs, ${gib(r.host.memoryAvailableBytes)} memory available of ${gib(r.host.memoryTotalBytes)}`);
  if (r.kvm.capabilities.length) {
    const width = Math.max(...r.kvm.capabilities.map((c) => c.name.length)) + 2;
    const caps = (required: boolean) =>
      r.kvm.capabilities
        .filter((c) => c.required === required)
        .map((c) => `  ${c.name.padEnd(width)}${c.value > 0 ? 'yes' : 'no'}${c.value > 1 ? ` (${c.value})` : ''}`);
    lines.push('Capabilities Lifeboat needs:', ...caps(true));
    lines.push('Capabilities Lifeboat uses when present:', ...caps(false));
  }
  lines.push('What runs here:');
  lines.push(`  Lifeboat guest: ${r.verdict.lifeboatGuest.runs} (${r.verdict.lifeboatGuest.reason})`);
  lines.push(`  Linux guests: ${r.verdict.linuxGuests.runs} (${r.verdict.linuxGuests.reason})`);
  if (r.kernel) {
    const name = r.kernel.kernelVersion ? `${r.kernel.kind}, ${r.kernel.kernelVersion.split(' ')[0]}` : r.kernel.kind;
    lines.push(`  ${r.kernel.path} (${name}): ${r.kernel.runs} (${r.kernel.reason})`);
  }
  return lines.join('\n') + '\n';
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}
