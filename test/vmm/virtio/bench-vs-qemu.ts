// Benchmark (not a test): the Lifeboat guest's `disk bench` under our VMM and under QEMU
// (`-M microvm`, virtio-blk-device, same image, same guest), side by side. The bar: each of our figures
// >= 0.8 of QEMU's.
//   node dist-NAME/test/vmm/virtio/bench-vs-qemu.js [--runs 3] [--size-mib 256] [--check] [--json]
// Medians of --runs boots per VMM; runs alternate between the two so drift on a shared host hits both.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { projectRoot } from '../../../src/util/project-root.js';
import { qemuArgs } from '../../helpers/qemu.js';
import { LIFEBOAT_MAIN } from '../../helpers/vmm.js';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    'size-mib': { type: 'string', default: '256' },
    check: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    kernel: { type: 'string' },
    elf: { type: 'string' },
  },
});

const FIELDS = ['seq_read_mibps', 'seq_write_mibps', 'rand_read_iops', 'rand_write_iops'] as const;
type Figures = Record<(typeof FIELDS)[number], number>;
const BENCH_LINE = /disk bench seq_read_mibps=(\d+) seq_write_mibps=(\d+) rand_read_iops=(\d+) rand_write_iops=(\d+)/;

function run(cmd: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: projectRoot(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('latin1').on('data', (s: string) => (out += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (out += s));
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('close', () => {
      clearTimeout(t);
      const m = BENCH_LINE.exec(out);
      if (m) resolve(out);
      else reject(new Error(`${cmd} printed no 'disk bench' line:\n${out.slice(-2000)}`));
    });
  });
}

function parse(out: string): Figures {
  const m = BENCH_LINE.exec(out)!;
  return Object.fromEntries(FIELDS.map((f, i) => [f, Number(m[i + 1])])) as Figures;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

const root = projectRoot();
const kernel = values.kernel ?? join(root, 'guest', 'build', 'lifeboat-guest.bin');
const elf = values.elf ?? join(root, 'guest', 'build', 'lifeboat-guest.elf');
for (const f of [kernel, elf]) if (!existsSync(f)) throw new Error(`${f} is missing: run 'make -C guest'`);
const dir = mkdtempSync(join(tmpdir(), 'lifeboat-bench-qemu-'));
const image = join(dir, 'bench.img');
writeFileSync(image, '');
truncateSync(image, Number(values['size-mib']) * 2 ** 20);
const exec = 'disk bench 0';
const timeoutMs = 600_000;

const ours: Figures[] = [];
const qemu: Figures[] = [];
try {
  for (let i = 0; i < Number(values.runs); i++) {
    const vmRun = [LIFEBOAT_MAIN, 'vm', 'run', '--kernel', kernel, '--vcpus', '1', '--mem', '256', '--boot-timeout', '0', '--disk', image, '--exec', exec];
    ours.push(parse(await run(process.execPath, vmRun, timeoutMs)));
    qemu.push(parse(await run('qemu-system-x86_64', qemuArgs({ kernel: elf, cpus: 1, memoryMiB: 256, disks: [{ path: image }], exec }), timeoutMs)));
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

const rows = FIELDS.map((f) => {
  const a = median(ours.map((r) => r[f]));
  const b = median(qemu.map((r) => r[f]));
  return { field: f, lifeboat: a, qemu: b, ratio: b > 0 ? Math.round((a / b) * 100) / 100 : Infinity };
});
if (values.json) console.log(JSON.stringify({ runs: Number(values.runs), rows, ours, qemu }));
else {
  console.log(`disk bench, median of ${values.runs} boots each (same guest, same ${values['size-mib']} MiB image)`);
  for (const r of rows) console.log(`${r.field.padEnd(16)} lifeboat ${String(r.lifeboat).padStart(6)}  qemu ${String(r.qemu).padStart(6)}  ratio ${r.ratio.toFixed(2)}`);
}
if (values.check && rows.some((r) => r.ratio < 0.8)) {
  console.error('below the bar: some figure is under 0.8 of QEMU\'s');
  process.exitCode = 1;
}
