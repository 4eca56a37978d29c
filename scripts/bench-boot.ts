// Our VMM against QEMU `-M microvm` on the same Lifeboat guest, vCPUs, memory and disk, runs interleaved:
// wall time from process start to the guest's first shell prompt, and the guest's `disk bench` (run twice
// in each VM: the second gives the throughput rows; the first, right after boot, also pays whatever a VMM
// starts on the first disk request, ours its I/O worker thread, and is reported beside them).
// Also the cost of one PIO exit round trip through our vCPU loop.
//
//   node dist/scripts/bench-boot.js [--runs 5] [--vcpus 1] [--mem 256] [--disk-mib 512] [--no-disk-bench] [--kernel BZIMAGE]
//                                   [--breakdown 5] [--keep-node-extra-ca-certs] [--compare OTHER_BUILD_DIR]
//   (--runs 0: only the PIO exit cost)
// --compare: a third VMM in the same interleaving, another build's `src/cli/main.js` under
// OTHER_BUILD_DIR (e.g. a checkout of the commit before a change, built with `npm run build`), so a
// change is judged against the build before it at the same load.
//
// Our VMM runs as `node OPTIONS <this build>/src/cli/main.js vm run ...` (what bin/lifeboat runs, with the Node options of its first line), QEMU with the
// flags of test/helpers/qemu.ts. NODE_EXTRA_CA_CERTS is removed from our VMM's environment unless
// --keep-node-extra-ca-certs: Node 20 parses the whole CA bundle at start-up when it is set (40-140 ms on
// a shared 2-core machine), a cost of the environment that QEMU does not pay; the report says when it was.
// --breakdown N: N more runs of ours with LIFEBOAT_VMM_TRACE=1, for where the start-up time goes.
//
// Each VMM runs once untimed first (warm page cache; our build's V8 code caches written, see
// scripts/bundle.ts). Prints a Markdown report (the "VMM (issue 3)" section of docs/benchmarks.md).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ACPI_POWER_OFF_VALUE } from '../vmm/acpi/tables.js';
import { platformDescriptors } from '../vmm/devices/descriptor.js';
import { allocateSerialState } from '../vmm/devices/serial.js';
import { probeKvmApi } from '../vmm/host-probe.js';
import { Kvm } from '../vmm/kvm/system.js';
import { COM1_GSI, KVM_TSS_ADDR } from '../vmm/layout.js';
import { GuestMemory } from '../vmm/memory.js';
import * as libc from '../vmm/sys/libc.js';
import { VcpuSet } from '../vmm/vcpus.js';
import { DEFAULT_CMDLINE } from '../vmm/vm-config.js';
import { projectRoot } from '../src/util/project-root.js';
import { qemuArgs } from '../test/helpers/qemu.js';
import { isBundled } from './bundle.js';
import { lifeboatNodeOptions } from './lifeboat-node.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
/** Whether this build's CLI was bundled by scripts/bundle.ts (npm run build) or is plain tsc output. */
const BUNDLED = isBundled(MAIN);
const PROMPT = 'lifeboat> ';

interface DiskBench {
  seqRead: number;
  seqWrite: number;
  randRead: number;
  randWrite: number;
}

interface Sample {
  bootMs: number;
  /** The guest's own boot time (its `lifeboat: ready in N us`, on the guest's clock from its entry). */
  guestMs: number;
  /** The second `disk bench` of the run: the disk path's throughput once it is up. */
  bench?: DiskBench;
  /** The first one, right after the prompt: includes whatever the VMM still starts on the first request. */
  firstBench?: DiskBench;
  /** LIFEBOAT_VMM_TRACE milestones (ms since the VMM process started), when traced. */
  trace?: Record<string, number>;
}

/** Spawns a VMM, measures start -> first prompt, runs `disk bench 0` twice, powers off. */
async function runOnce(cmd: string, args: string[], diskBench: boolean, env: NodeJS.ProcessEnv = process.env): Promise<Sample> {
  const t0 = performance.now();
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env });
  let out = '';
  let err = '';
  let bootMs = -1;
  let waiter: (() => void) | undefined;
  child.stdout.setEncoding('latin1').on('data', (s: string) => {
    out += s;
    if (bootMs < 0 && out.includes(PROMPT)) bootMs = performance.now() - t0;
    waiter?.();
  });
  child.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => {
    waiter?.();
    resolve(code);
  }));
  const waitFor = async (re: RegExp, from: number, ms: number): Promise<RegExpExecArray> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = re.exec(out.slice(from));
      if (m) return m;
      if (child.exitCode !== null || Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`${cmd}: no ${re} (exit ${child.exitCode}); output tail:\n${out.slice(-800)}\n${err}`);
      }
      await new Promise<void>((r) => {
        waiter = r;
        setTimeout(r, 200);
      });
    }
  };
  try {
    await waitFor(/lifeboat> /, 0, 60_000);
    const benches: DiskBench[] = [];
    for (let i = 0; diskBench && i < 2; i++) {
      const from = out.length;
      child.stdin.write('disk bench 0\n');
      const m = await waitFor(/disk bench seq_read_mibps=(\d+) seq_write_mibps=(\d+) rand_read_iops=(\d+) rand_write_iops=(\d+)/, from, 180_000);
      benches.push({ seqRead: Number(m[1]), seqWrite: Number(m[2]), randRead: Number(m[3]), randWrite: Number(m[4]) });
    }
    const [firstBench, bench] = benches;
    child.stdin.write('poweroff\n');
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(timer);
    const ready = /lifeboat: ready in (\d+) us/.exec(out);
    return { bootMs, guestMs: ready ? Number(ready[1]) / 1000 : NaN, bench, firstBench, trace: traceMilestones(err) };
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
}

/** `lifeboat vm trace: STEP [N ms ](t=T ms)` lines, and the vCPU threads' own line: milestone -> T. */
function traceMilestones(stderr: string): Record<string, number> | undefined {
  const t: Record<string, number> = {};
  for (const m of stderr.matchAll(/lifeboat vm trace: (.+?) (?:[\d.]+ ms )?\(t=([\d.]+) ms\)/g)) t[m[1]!] ??= Number(m[2]);
  for (const v of stderr.matchAll(/vCPU (\d+) code loaded t=([\d.]+) ms, configured t=([\d.]+) ms, ready t=([\d.]+) ms(?: \(thread spawned t=([\d.]+) ms, attached t=([\d.]+) ms)?/g)) {
    const n = `vCPU ${v[1]}`;
    Object.assign(t, { [`${n} worker loaded`]: Number(v[2]), [`${n} configured`]: Number(v[3]), [`${n} ready`]: Number(v[4]) });
    if (v[5] !== undefined) Object.assign(t, { [`${n} worker thread spawned`]: Number(v[5]), [`${n} attached`]: Number(v[6]) });
  }
  return Object.keys(t).length ? t : undefined;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
}

/** Nanoseconds per PIO exit: real-mode code doing `out 0x80, al` in a loop on one of our vCPUs. */
async function pioExitCost(exits: number): Promise<number> {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  vm.createPlatform(KVM_TSS_ADDR);
  const memory = GuestMemory.create(16 << 20);
  vm.mapMemory(memory.regions, memory.shared.hostAddress, false);
  // mov ecx, N; l: out 0x80, al; loop l (a32); mov eax, 0; out 0xf4, eax
  const n = Buffer.alloc(4);
  n.writeUInt32LE(exits);
  memory.write(0x1000, Uint8Array.from([0x66, 0xb9, ...n, 0xe6, 0x80, 0x67, 0xe2, 0xfb, 0x66, 0x31, 0xc0, 0x66, 0xe7, 0xf4, 0xf4]));
  const [r, w] = libc.pipe();
  const irq = libc.eventfd();
  vm.registerIrqfd(COM1_GSI, irq);
  const supportedCpuid = kvm.supportedCpuid();
  const set = VcpuSet.create(kvm, vm, 1, () => ({ kind: 'real-mode', ip: 0x1000, supportedCpuid, vcpuCount: 1 }));
  let done!: () => void;
  const finished = new Promise<void>((resolve) => (done = resolve));
  await set.start({ memory, devices: platformDescriptors(allocateSerialState(), w, irq, ACPI_POWER_OFF_VALUE), onEvent: () => done() });
  const t0 = performance.now();
  set.resume();
  await finished;
  const ns = ((performance.now() - t0) * 1e6) / exits;
  await set.stop();
  for (const fd of [r, w, irq]) libc.close(fd);
  memory.close();
  vm.close();
  kvm.close();
  return ns;
}

const HELP = `Usage: node dist/scripts/bench-boot.js [options]

Our VMM (this build's \`vm run\`) against QEMU -M microvm on the same Lifeboat guest, vCPUs, memory and
disk, runs interleaved: wall time from process start to the first \`lifeboat> \` prompt, the guest's own
boot time, optionally the guest's \`disk bench\` (twice: throughput from the second, the first after boot beside it), and the cost of a PIO exit. Each VMM runs once untimed
first (warm page cache, our code caches written). Prints a Markdown report.

Options:
  --runs N                     interleaved runs of each (default 5; 0: only the PIO exit cost)
  --vcpus N                    guest vCPUs (default 1)
  --mem MiB                    guest memory (default 256)
  --disk-mib N                 size of the sparse disk attached to each (default 512)
  --no-disk-bench              only boot to the prompt and power off
  --kernel BZIMAGE             our VMM's kernel (default: guest/build/lifeboat-guest.bin)
  --breakdown N                N more runs of ours with LIFEBOAT_VMM_TRACE=1: where start-up goes (default 5)
  --compare DIR                a third VMM in the same interleaving: another build's src/cli/main.js
                               under DIR (e.g. the build before a change)
  --keep-node-extra-ca-certs   keep NODE_EXTRA_CA_CERTS in our VMM's environment (removed by default:
                               Node parses the whole bundle at start-up, a cost QEMU does not pay)
`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '5' },
      vcpus: { type: 'string', default: '1' },
      mem: { type: 'string', default: '256' },
      'disk-mib': { type: 'string', default: '512' },
      'no-disk-bench': { type: 'boolean' },
      kernel: { type: 'string' },
      breakdown: { type: 'string', default: '5' },
      'keep-node-extra-ca-certs': { type: 'boolean' },
      compare: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const runs = Number(values.runs);
  const vcpus = Number(values.vcpus);
  const mem = Number(values.mem);
  const diskBench = !values['no-disk-bench'];
  const root = projectRoot();
  const bin = values.kernel ?? join(root, 'guest', 'build', 'lifeboat-guest.bin');
  const elf = join(root, 'guest', 'build', 'lifeboat-guest.elf');
  for (const f of [bin, elf]) if (!existsSync(f)) throw new Error(`${f} is missing: run 'make -C guest'`);
  const dir = mkdtempSync(join(tmpdir(), 'lifeboat-bench-'));
  const diskOurs = join(dir, 'ours.img');
  const diskQemu = join(dir, 'qemu.img');
  for (const d of [diskOurs, diskQemu]) {
    writeFileSync(d, '');
    truncateSync(d, Number(values['disk-mib']) * 1024 * 1024);
  }
  const tscKhz = probeKvmApi().tscKhz;
  const cmdline = `${DEFAULT_CMDLINE}${tscKhz ? ` lifeboat.tsc_khz=${tscKhz}` : ''}`;
  const vmRun = ['vm', 'run', '--kernel', bin, '--vcpus', String(vcpus), '--mem', String(mem), '--disk'];
  const ours = [process.execPath, [...lifeboatNodeOptions(root), MAIN, ...vmRun, diskOurs]] as const;
  const oursEnv = { ...process.env };
  const droppedCaCerts = oursEnv.NODE_EXTRA_CA_CERTS !== undefined && !values['keep-node-extra-ca-certs'];
  if (droppedCaCerts) delete oursEnv.NODE_EXTRA_CA_CERTS;
  // The flags the guest's own QEMU harness uses (virtio-mmio version 2, console on stdio), plus -no-user-config.
  const qemu = ['qemu-system-x86_64', ['-no-user-config', ...qemuArgs({ accel: 'kvm', cpus: vcpus, memoryMiB: mem, kernel: elf, append: cmdline, disks: [{ path: diskQemu }] })]] as const;

  const otherMain = values.compare === undefined ? undefined : join(values.compare, 'src', 'cli', 'main.js');
  if (otherMain !== undefined && !existsSync(otherMain)) throw new Error(`--compare: ${otherMain} does not exist (build that tree first)`);
  const diskOther = join(dir, 'other.img');
  const other = otherMain === undefined ? undefined : ([process.execPath, [...lifeboatNodeOptions(dirname(resolve(values.compare!))), otherMain, ...vmRun, diskOther]] as const);
  if (other) {
    writeFileSync(diskOther, '');
    truncateSync(diskOther, Number(values['disk-mib']) * 1024 * 1024);
  }

  const loadAtStart = loadavg()[0]!;
  const samples = { ours: [] as Sample[], qemu: [] as Sample[], other: [] as Sample[] };
  const contestants: Array<'ours' | 'qemu' | 'other'> = other ? ['ours', 'qemu', 'other'] : ['ours', 'qemu'];
  // One untimed run of each first: the page cache warm for all, and our VMM's code caches written (a
  // fresh build writes them after its first `vm run`, scripts/bundle.ts), as for every later start.
  if (runs > 0) {
    for (const who of contestants) {
      const [cmd, args] = who === 'ours' ? ours : who === 'qemu' ? qemu : other!;
      await runOnce(cmd, [...args], false, who === 'qemu' ? process.env : oursEnv);
    }
  }
  for (let i = 0; i < runs; i++) {
    // Interleaved, rotating who goes first, so drift on a shared machine hits all alike.
    const order = contestants.map((_, k) => contestants[(i + k) % contestants.length]!);
    for (const who of order) {
      const [cmd, args] = who === 'ours' ? ours : who === 'qemu' ? qemu : other!;
      const s = await runOnce(cmd, [...args], diskBench, who === 'qemu' ? process.env : oursEnv);
      samples[who].push(s);
      process.stderr.write(`run ${i + 1}/${runs} ${who}: boot ${s.bootMs.toFixed(0)} ms${s.bench ? ` seq r/w ${s.bench.seqRead}/${s.bench.seqWrite} MiB/s rand r/w ${s.bench.randRead}/${s.bench.randWrite} IOPS` : ''}\n`);
    }
  }
  const traced: Sample[] = [];
  for (let i = 0; i < Number(values.breakdown); i++) traced.push(await runOnce(ours[0], [...ours[1]], false, { ...oursEnv, LIFEBOAT_VMM_TRACE: '1' }));
  const pioNs = await pioExitCost(20_000);
  rmSync(dir, { recursive: true, force: true });

  const row = (name: string, pick: (s: Sample) => number, unit: string, bar: string) => {
    const o = median(samples.ours.map(pick));
    const q = median(samples.qemu.map(pick));
    const ratio = o / q;
    return `| ${name} | ${o.toFixed(0)} ${unit} | ${q.toFixed(0)} ${unit} | ${ratio.toFixed(2)} | ${bar} |`;
  };
  if (runs === 0) {
    process.stdout.write(`PIO exit round trip through our vCPU loop: ${(pioNs / 1000).toFixed(1)} us\n`);
    return;
  }
  const lines = [
    `Command: \`node dist/scripts/bench-boot.js --runs ${runs} --vcpus ${vcpus} --mem ${mem} --disk-mib ${values['disk-mib']}${diskBench ? '' : ' --no-disk-bench'}${values['keep-node-extra-ca-certs'] ? ' --keep-node-extra-ca-certs' : ''}\``,
    `(${runs} interleaved runs each, alternating who goes first; medians; ratio = ours / QEMU; ${new Date().toISOString().slice(0, 10)}; ` +
      `${vcpus} vCPU guest, ${mem} MiB; CLI ${BUNDLED ? 'bundled (npm run build)' : 'NOT bundled (tsc only)'}; host: ${cpus().length} cores, load average ${loadAtStart.toFixed(1)} at the start, ${loadavg()[0]!.toFixed(1)} at the end` +
      `${droppedCaCerts ? '; NODE_EXTRA_CA_CERTS, set in this environment, removed from our VMM\'s' : ''})`,
    '',
    '| measure | Lifeboat VMM | QEMU microvm | ratio | bar |',
    '|---|---|---|---|---|',
    row('process start -> first `lifeboat> `', (s) => s.bootMs, 'ms', '<= 1.0'),
    row('  of which the guest\'s own boot (its `ready in`)', (s) => s.guestMs, 'ms', '-'),
  ];
  if (diskBench) {
    lines.push(
      row('disk bench seq read', (s) => s.bench!.seqRead, 'MiB/s', '>= 0.8'),
      row('disk bench seq write', (s) => s.bench!.seqWrite, 'MiB/s', '>= 0.8'),
      row('disk bench random read', (s) => s.bench!.randRead, 'IOPS', '>= 0.8'),
      row('disk bench random write', (s) => s.bench!.randWrite, 'IOPS', '>= 0.8'),
      row('  seq write of the first `disk bench` after boot', (s) => s.firstBench!.seqWrite, 'MiB/s', '-'),
      row('  seq read of the first `disk bench` after boot', (s) => s.firstBench!.seqRead, 'MiB/s', '-'),
    );
  }
  if (other) {
    const o = (pick: (s: Sample) => number) => median(samples.other.map(pick));
    lines.push(
      '',
      `The other build (\`--compare ${values.compare}\`), same interleaving: first \`lifeboat> \` ${o((s) => s.bootMs).toFixed(0)} ms (ratio to QEMU ` +
        `${(o((s) => s.bootMs) / median(samples.qemu.map((s) => s.bootMs))).toFixed(2)}), the guest's own boot ${o((s) => s.guestMs).toFixed(0)} ms` +
        (diskBench ? `; disk bench seq read/write ${o((s) => s.bench!.seqRead).toFixed(0)}/${o((s) => s.bench!.seqWrite).toFixed(0)} MiB/s, random read/write ` +
          `${o((s) => s.bench!.randRead).toFixed(0)}/${o((s) => s.bench!.randWrite).toFixed(0)} IOPS (first after boot: seq write ${o((s) => s.firstBench!.seqWrite).toFixed(0)} MiB/s).` : '.'),
    );
  }
  lines.push('', `PIO exit round trip through our vCPU loop (guest \`out\` -> KVM_RUN returns -> Bus -> KVM_RUN): ${(pioNs / 1000).toFixed(1)} us`);
  const milestones = [...new Set(traced.flatMap((s) => Object.keys(s.trace ?? {})))];
  if (milestones.length) {
    const at = (k: string) => median(traced.map((s) => s.trace?.[k]).filter((v): v is number => v !== undefined));
    lines.push('', `Where our start-up goes (${traced.length} more runs with LIFEBOAT_VMM_TRACE=1; median ms since the process started):`, '',
      '| milestone | t (ms) |', '|---|---|',
      ...milestones.sort((a, b) => at(a) - at(b)).map((k) => `| ${k} | ${at(k).toFixed(1)} |`),
      `| guest entry (first prompt - guest's own boot) | ${median(traced.map((s) => s.bootMs - s.guestMs)).toFixed(1)} |`,
      `| first \`lifeboat> \` (wall, measured here) | ${median(traced.map((s) => s.bootMs)).toFixed(1)} |`);
  }
  process.stdout.write(lines.join('\n') + '\n');
}

await main();
