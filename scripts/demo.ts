// The main demo: protect a running VM, back it up incrementally from exact change tracking, lose it,
// restore it, and prove the restored disk is consistent. Drives the `lifeboat` CLI as a user would.
// Run with `npm run demo` (or scripts/demo.sh on a fresh machine). State lives in .state/demo/.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync, truncateSync, openSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../src/util/project-root.js';

const root = projectRoot();
const state = join(root, '.state', 'demo');
const bin = join(root, 'bin', 'lifeboat');
const disk = join(state, 'disk.img');
const sock = join(state, 'vm.sock');
const repo = join(state, 'repository');
const passwordFile = join(state, 'password');
const started = performance.now();

function step(text: string): void {
  const t = ((performance.now() - started) / 1000).toFixed(1).padStart(5);
  process.stdout.write(`\n[${t} s] ${text}\n`);
}

function show(text: string): void {
  process.stdout.write(`         ${text}\n`);
}

/** Runs a lifeboat command; returns its parsed --json output. Any failure ends the demo with its message. */
function lifeboat(args: string[]): Record<string, unknown> {
  const r = spawnSync(process.execPath, [bin, ...args, '--json'], { encoding: 'utf8', env: { ...process.env } });
  if (r.status !== 0) throw new Error(`lifeboat ${args.slice(0, 2).join(' ')} failed (status ${r.status}): ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

function mib(bytes: unknown): string {
  return `${(Number(bytes) / 2 ** 20).toFixed(2)} MiB`;
}

/** The protected VM: the Lifeboat guest appending to its crash-consistent ledger on disk 0. */
class ProtectedVm {
  private readonly child: ChildProcess;
  private console = '';
  lastDurable = 0;

  constructor() {
    this.child = spawn(process.execPath, [bin, 'vm', 'run', '--vcpus', '2', '--mem', '256', '--disk', disk, '--api-sock', sock, '--exec', 'ledger run 200'], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const take = (chunk: Buffer): void => {
      this.console += chunk.toString('utf8');
      for (const m of this.console.matchAll(/ledger durable seq=(\d+)\r?\n/g)) this.lastDurable = Math.max(this.lastDurable, Number(m[1]));
      this.console = this.console.slice(-4096);
    };
    this.child.stdout!.on('data', take);
    this.child.stderr!.on('data', take);
  }

  async waitForSeq(seq: number, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.lastDurable < seq) {
      if (this.child.exitCode !== null) throw new Error(`the VM exited (status ${this.child.exitCode}): ${this.console.trim().split('\n').slice(-3).join(' | ')}`);
      if (Date.now() > deadline) throw new Error(`the guest's ledger did not reach seq ${seq} within ${timeoutMs / 1000} s`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Pulls the plug: the disaster. */
  kill(): Promise<void> {
    return new Promise((resolve) => {
      this.child.once('exit', () => resolve());
      this.child.kill('SIGKILL');
    });
  }
}

async function main(): Promise<void> {
  step('Setting up .state/demo: a 256 MiB sparse disk image and an encrypted repository');
  rmSync(state, { recursive: true, force: true });
  mkdirSync(state, { recursive: true });
  closeSync(openSync(disk, 'w'));
  truncateSync(disk, 256 * 2 ** 20);
  writeFileSync(passwordFile, 'lifeboat demo passphrase\n', { mode: 0o600 });
  const key = ['--password-file', passwordFile];
  const init = lifeboat(['repo', 'init', '--target', repo, ...key]);
  show(`repository ${String(init.repository).slice(0, 8)} (${init.encryption}, ${init.compression}, ${Number(init.chunkSize) / 1024} KiB chunks) at ${repo}`);

  step('Booting the protected VM (Lifeboat guest, 2 vCPUs) and starting its ledger workload');
  const vm = new ProtectedVm();
  await vm.waitForSeq(50);
  show(`guest is appending ledger records: durable seq ${vm.lastDurable}`);

  const points: Array<{ id: string; durable: number }> = [];
  for (const [i, changedOnly] of [[1, false], [2, true], [3, true]] as const) {
    step(`Recovery point ${i}: freeze a consistent point while the guest keeps writing`);
    const durable = vm.lastDurable;
    const created = lifeboat(['point', 'create', '--api-sock', sock]) as { points: Array<{ generation: number; trusted: boolean; changedBytes: number }> };
    const p = created.points[0]!;
    show(`point generation ${p.generation}: ${mib(p.changedBytes)} changed since the last point, change history ${p.trusted ? 'trusted' : 'new (first start: everything is read once)'}`);
    const image = join(state, `point${i}.img`);
    const bitmap = join(state, `point${i}.bitmap`);
    lifeboat(['point', 'export', '--api-sock', sock, '--point', String(p.generation), '--out', image, ...(changedOnly ? ['--changed-only'] : []), '--bitmap', bitmap]);
    const t0 = performance.now();
    const backup = lifeboat(['backup', image, '--target', repo, ...key, '--vm', 'demo', '--disk', 'disk0', '--bitmap', bitmap, ...(i === 1 ? ['--full'] : [])]) as {
      point: string; bytesRead: number; bytesAdded: number; images: Array<{ mode: string; chunksRead: number; chunks: number }>;
    };
    const ms = (performance.now() - t0).toFixed(0);
    const im = backup.images[0]!;
    show(`backup ${backup.point.slice(0, 8)} (${im.mode}): read ${im.chunksRead} of ${im.chunks} chunks, added ${mib(backup.bytesAdded)} to the repository in ${ms} ms`);
    lifeboat(['point', 'release', '--api-sock', sock, '--point', String(p.generation)]);
    rmSync(image, { force: true });
    points.push({ id: backup.point, durable });
    await vm.waitForSeq(vm.lastDurable + 100);
  }

  step('Disaster: the VM is killed (SIGKILL) mid-write');
  await vm.kill();
  show(`the guest had made seq ${vm.lastDurable} durable when it died`);

  step('Verifying every byte in the repository');
  const verify = lifeboat(['verify', '--target', repo, ...key, '--read-data']);
  show(`verify: ${JSON.stringify(verify).slice(0, 160)}`);

  const latest = points[points.length - 1]!;
  step(`Restoring the latest recovery point (${latest.id.slice(0, 8)}) to a new disk image`);
  const restored = join(state, 'restored.img');
  const r = lifeboat(['restore', latest.id, '--target', repo, ...key, '--to', restored]);
  show(`restored ${mib(r.size)} in ${r.durationMs} ms (${mib(r.bytesFetched)} fetched; zero chunks left as holes)`);

  step('Booting a replica VM on the restored disk and checking its ledger');
  const check = spawnSync(process.execPath, [bin, 'vm', 'run', '--disk', restored, '--exec', 'ledger check'], { encoding: 'utf8' });
  const line = /ledger (ok|corrupt)[^\n]*/.exec(check.stdout)?.[0] ?? check.stdout.trim().split('\n').pop();
  show(line ?? '(no output)');
  const last = Number(/last=(\d+)/.exec(check.stdout)?.[1] ?? -1);
  if (check.status !== 0 || last < latest.durable) {
    throw new Error(`the restored ledger is not consistent with the point (status ${check.status}, last=${last}, expected >= ${latest.durable})`);
  }
  step(`Done: the replica's ledger is intact up to seq ${last}, every record durable when the point was taken (seq ${latest.durable}) is there.`);
  show(`Try: node bin/lifeboat points list --target ${repo} --password-file ${passwordFile}`);
}

main().catch((err: Error) => {
  process.stderr.write(`\ndemo failed: ${err.message}\n`);
  process.exitCode = 1;
});
