// VM snapshots, ours against QEMU's migrate-to-file, on the same Lifeboat guest (1 GiB, 2 vCPUs by
// default) after it dirtied 5% of its memory (`mem dirty`):
//   - ours: pause time, size and total time of a diff snapshot (over a full one taken first), and the
//     time from `lifeboat vm restore` (full + diff) to running vCPUs; warm: a `lifeboat vm standby`
//     process started beforehand, from sending it the `restore` request to its answer (sent once the
//     vCPUs run);
//   - QEMU: `migrate "exec:cat > FILE"` (QMP): downtime, total time, size; `-incoming "exec:cat FILE"`:
//     process start to status "running"; warm: QEMU started with `-incoming defer`, from the QMP
//     `migrate-incoming "exec:cat FILE"` command to `query-status` saying running.
// Also guest disk write throughput (`disk bench 0`) with changed-block tracking on and off.
//
//   node dist/scripts/bench-snapshot.js [--runs 3] [--mem 1024] [--vcpus 2] [--dirty-percent 5]
//                                      [--no-qemu] [--no-throughput] [--docs] [--keep-node-extra-ca-certs]
//                                      [--pause-runs N [--baseline-cli OTHER/dist/src/cli/main.js]]
//
// --pause-runs N first takes N diff snapshots of one booted VM (and N migrations of one QEMU) and reports
// the pause alone: medians, each step of ours (the snapshot's own timeline: vmm/snapshot/pause-timing.ts),
// the KVM ioctls a consistent snapshot cannot do without (the floor), and QEMU's downtime from its
// trace events (microseconds; QMP reports whole ms). --baseline-cli interleaves another build's CLI.
//
// Our VMM runs without NODE_EXTRA_CA_CERTS unless --keep-node-extra-ca-certs (see scripts/bench-boot.ts:
// Node 20 parses the whole CA bundle at start-up when it is set, a cost of the environment).
//
// Prints a Markdown report; --docs also writes it as the "Snapshots (issue 4)" section of docs/benchmarks.md.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { controlRequest } from '../vmm/control-socket.js';
import { projectRoot } from '../src/util/project-root.js';
import { qemuArgs } from '../test/helpers/qemu.js';
import { isBundled } from './bundle.js';
import { lifeboatNodeOptions } from './lifeboat-node.js';
import { VM_STATE_STEP, type PauseStep } from '../vmm/snapshot/pause-timing.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
/** Whether this build's CLI was bundled by scripts/bundle.ts (npm run build) or is plain tsc output. */
const BUNDLED = isBundled(MAIN);
/** The Node options a user's `lifeboat` runs with (bin/lifeboat's first line). */
const NODE_OPTIONS = lifeboatNodeOptions(projectRoot());
const PROMPT = 'lifeboat> ';
/** Our VMM's environment: NODE_EXTRA_CA_CERTS removed unless --keep-node-extra-ca-certs (set in main). */
let keepCaCerts = false;
const droppedCaCerts = () => process.env.NODE_EXTRA_CA_CERTS !== undefined && !keepCaCerts;
function vmmEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  if (droppedCaCerts()) delete env.NODE_EXTRA_CA_CERTS;
  return env;
}
const PAGE = 4096;

/** A child process whose stdout (the guest console) and stderr we watch. */
class Proc {
  out = '';
  err = '';
  readonly child: ChildProcess;
  readonly started = performance.now();
  readonly exited: Promise<number | null>;

  constructor(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env) {
    this.child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env });
    this.child.stdout!.setEncoding('latin1').on('data', (s: string) => (this.out += s.replace(/\r/g, '')));
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => (this.err += s));
    this.child.stdin!.on('error', () => {});
    this.exited = new Promise((resolve) => this.child.once('close', resolve));
  }

  async until(test: () => boolean, what: string, ms = 60_000): Promise<number> {
    const deadline = Date.now() + ms;
    while (!test()) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`${what}: the process exited; output tail: ${this.out.slice(-400)} ${this.err.slice(-400)}`);
      if (Date.now() > deadline) throw new Error(`${what}: timed out; output tail: ${this.out.slice(-400)} ${this.err.slice(-400)}`);
      await new Promise((r) => setTimeout(r, 1));
    }
    return performance.now() - this.started;
  }

  async command(line: string, ms = 120_000): Promise<string> {
    const from = this.out.length;
    this.child.stdin!.write(line + '\n');
    await this.until(() => this.out.slice(from).endsWith(PROMPT), line, ms);
    return this.out.slice(from);
  }

  async kill(): Promise<void> {
    this.child.kill('SIGKILL');
    await this.exited;
  }
}

/**
 * Before a restore is timed (ours and QEMU's alike): let the host finish what the killed VM and the
 * snapshot just written left behind (freeing the VM's memory, writeback), which otherwise lands on the
 * restore being measured rather than on the snapshot.
 */
async function settle(): Promise<void> {
  await new Promise((r) => setTimeout(r, 1000));
}

async function op(socket: string, request: { op: string } & Record<string, unknown>): Promise<Record<string, unknown>> {
  const r = await controlRequest(socket, request as never, 600_000);
  if (!r.ok) throw new Error(`${request.op}: ${r.error}`);
  return r as Record<string, unknown>;
}

interface OursSample {
  pauseMs: number;
  /** Where the pause went (the snapshot's own timeline, see vmm/snapshot/pause-timing.ts). */
  pauseSteps: PauseStep[];
  totalMs: number;
  diffBytes: number;
  diffPages: number;
  restoreWallMs: number;
  /** Process start until `lifeboat vm restore` starts (Node start-up, the CLI and the VMM code loaded). */
  startupMs: number;
  /** From then to running vCPUs: open the snapshot, map its memory, build the VM, load its state. */
  restoreVmmMs: number;
  /** Of which opening the snapshot chain (state read and checked, memory and the diffs' pages mapped). */
  openMs: number;
  /** Diff page ranges mapped over the full snapshot's mapping, and copied in. */
  mappedRanges: number;
  copiedRanges: number;
  /** From running vCPUs until every page of the chain passed its CRC (the disks wait for it, the vCPUs do not). */
  verifyMs: number;
  /** Warm standby: from writing the `restore` request to its answer (vCPUs running), on our side of the socket. */
  warmMs: number;
  /** The same as the standby measured it (from reading the request to running vCPUs). */
  warmVmmMs: number;
}

async function ours(dir: string, mem: number, vcpus: number, dirtyPages: number): Promise<OursSample> {
  const sock = join(dir, 'vm.sock');
  const vm = new Proc(process.execPath, [...NODE_OPTIONS, MAIN, 'vm', 'run', '--mem', String(mem), '--vcpus', String(vcpus), '--api-sock', sock], vmmEnv());
  try {
    await vm.until(() => vm.out.endsWith(PROMPT), 'boot');
    await op(sock, { op: 'snapshot.create', kind: 'full', out: join(dir, 'full') });
    const dirtied = await vm.command(`mem dirty ${dirtyPages}`);
    if (!dirtied.includes(`mem dirty pages=${dirtyPages}`)) throw new Error(`mem dirty: ${dirtied}`);
    const diff = await op(sock, { op: 'snapshot.create', kind: 'diff', out: join(dir, 'diff') });
    await vm.kill();
    await settle();
    // Restore: wall time from process start to the vCPUs running (the VMM's trace line), and the same
    // measured inside the VMM from the start of the restore to the resume.
    const restored = new Proc(process.execPath, [...NODE_OPTIONS, MAIN, 'vm', 'restore', '--from', join(dir, 'full'), '--from', join(dir, 'diff')], vmmEnv({ LIFEBOAT_VMM_TRACE: '1' }));
    let cold: Omit<OursSample, 'warmMs' | 'warmVmmMs'>;
    try {
      const wall = await restored.until(() => /trace: vCPUs running /.test(restored.err), 'restore');
      const at = (step: string) => {
        const m = new RegExp(`trace: ${step.replace(/[()]/g, '\\$&')} (?:[\\d.]+ ms )?\\(t=([\\d.]+) ms\\)`).exec(restored.err);
        if (!m) throw new Error(`no '${step}' in the restore's trace: ${restored.err}`);
        return Number(m[1]);
      };
      const started = at('command started');
      const alive = await restored.command('info', 30_000);
      if (!alive.includes('info cpus=')) throw new Error(`the restored guest does not answer: ${alive}`);
      await restored.until(() => /trace: snapshot verified /.test(restored.err), 'snapshot verification');
      const opened = /trace: snapshot opened \(memory mapped: (\d+) diff ranges mapped, (\d+) copied\) \(t=([\d.]+) ms\)/.exec(restored.err);
      if (!opened) throw new Error(`no 'snapshot opened' in the restore's trace: ${restored.err}`);
      cold = {
        pauseMs: diff.pauseMs as number, pauseSteps: diff.pauseSteps as PauseStep[], totalMs: diff.totalMs as number, diffBytes: diff.diskBytes as number, diffPages: diff.memoryPages as number,
        restoreWallMs: wall, startupMs: started, restoreVmmMs: at('vCPUs running') - started, openMs: Number(opened[3]) - started,
        mappedRanges: Number(opened[1]), copiedRanges: Number(opened[2]), verifyMs: at('snapshot verified') - at('vCPUs running'),
      };
    } finally {
      await restored.kill();
    }
    await settle();
    return { ...cold, ...await oursWarm(dir, vcpus, mem) };
  } finally {
    await vm.kill();
  }
}

/**
 * Warm standby: `lifeboat vm standby --mem` started and warm (its vCPU workers loaded, its KVM VM made), then the time from
 * writing the `restore` request on its control socket to reading its answer, which the standby sends
 * once the restored vCPUs run (its `restoreMs` is the same measured inside it).
 */
async function oursWarm(dir: string, vcpus: number, mem: number): Promise<{ warmMs: number; warmVmmMs: number }> {
  const sock = join(dir, 'standby.sock');
  // A DR site's standby knows the size of the VM it stands by for: --mem has it make that VM ahead.
  const standby = new Proc(process.execPath, [...NODE_OPTIONS, MAIN, 'vm', 'standby', '--api-sock', sock, '--vcpus', String(vcpus), '--mem', String(mem)], vmmEnv());
  try {
    await standby.until(() => /ready on .* waiting for a restore request/.test(standby.err), 'standby ready');
    await settle();
    const request = { op: 'restore', from: [join(dir, 'full'), join(dir, 'diff')] };
    const { ms, response } = await new Promise<{ ms: number; response: Record<string, unknown> }>((resolve, reject) => {
      const c = createConnection(sock);
      let buf = '';
      let t0 = 0;
      c.setEncoding('utf8');
      c.once('connect', () => {
        t0 = performance.now();
        c.write(JSON.stringify(request) + '\n');
      });
      c.on('data', (text: string) => {
        buf += text;
        if (!buf.includes('\n')) return;
        const ms = performance.now() - t0;
        c.end();
        resolve({ ms, response: JSON.parse(buf.slice(0, buf.indexOf('\n'))) as Record<string, unknown> });
      });
      c.once('error', reject);
    });
    if (response.ok !== true) throw new Error(`standby restore: ${JSON.stringify(response)}`);
    const alive = await standby.command('info', 30_000);
    if (!alive.includes('info cpus=')) throw new Error(`the guest restored on standby does not answer: ${alive}`);
    return { warmMs: ms, warmVmmMs: response.restoreMs as number };
  } finally {
    await standby.kill();
  }
}

/** A QMP connection kept open (capabilities negotiated), commands one at a time. */
class QmpSession {
  private buf = '';
  private waiting: ((msg: Record<string, unknown>) => void) | undefined;
  private constructor(private readonly c: ReturnType<typeof createConnection>) {
    c.setEncoding('utf8');
    c.on('data', (s: string) => {
      this.buf += s;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(this.buf.slice(0, nl)) as Record<string, unknown>;
        this.buf = this.buf.slice(nl + 1);
        if ('event' in msg) continue;
        const w = this.waiting;
        this.waiting = undefined;
        w?.(msg);
      }
    });
  }

  static async open(socket: string): Promise<QmpSession> {
    const c = createConnection(socket);
    await new Promise<void>((resolve, reject) => {
      c.once('connect', () => resolve());
      c.once('error', reject);
    });
    const session = new QmpSession(c);
    await session.next(); // the greeting
    await session.execute({ execute: 'qmp_capabilities' });
    return session;
  }

  private next(): Promise<Record<string, unknown>> {
    return new Promise((resolve) => (this.waiting = resolve));
  }

  async execute(command: Record<string, unknown>): Promise<Record<string, unknown>> {
    const reply = this.next();
    this.c.write(JSON.stringify(command) + '\n');
    const msg = await reply;
    if ('error' in msg) throw new Error(`QMP ${JSON.stringify(command)}: ${JSON.stringify(msg.error)}`);
    return msg.return as Record<string, unknown>;
  }

  close(): void {
    this.c.end();
  }
}

/** QEMU warm: started with `-incoming defer` and QMP answering, then `migrate-incoming` until running. */
async function qemuWarm(dir: string, base: string[], file: string): Promise<number> {
  const sock = join(dir, 'qmp-warm.sock');
  const vm = new Proc('qemu-system-x86_64', [...base, '-qmp', `unix:${sock},server=on,wait=off`, '-incoming', 'defer']);
  try {
    while (!existsSync(sock)) {
      if (vm.child.exitCode !== null) throw new Error(`QEMU -incoming defer exited: ${vm.err}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    // The socket file exists from bind(); QEMU listens a moment later (ECONNREFUSED until then).
    let session: QmpSession | undefined;
    for (let tries = 0; !session; tries++) {
      session = await QmpSession.open(sock).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ECONNREFUSED' || tries >= 200) throw err;
        return new Promise<undefined>((r) => setTimeout(() => r(undefined), 10));
      });
    }
    try {
      await settle();
      const t0 = performance.now();
      await session.execute({ execute: 'migrate-incoming', arguments: { uri: `exec:cat ${file}` } });
      for (;;) {
        const s = await session.execute({ execute: 'query-status' });
        if (s.status === 'running') break;
        if (vm.child.exitCode !== null) throw new Error(`QEMU exited during migrate-incoming: ${vm.err}`);
      }
      const ms = performance.now() - t0;
      const alive = await vm.command('info', 30_000);
      if (!alive.includes('info cpus=')) throw new Error(`the QEMU guest restored warm does not answer: ${alive}`);
      return ms;
    } finally {
      session.close();
    }
  } finally {
    await vm.kill();
  }
}

/** One QMP command on a fresh connection (after the capabilities handshake). */
async function qmp(socket: string, command: Record<string, unknown>): Promise<Record<string, unknown>> {
  return await new Promise((resolve, reject) => {
    const c = createConnection(socket);
    let buf = '';
    let stage = 0;
    c.setEncoding('utf8');
    c.on('data', (s: string) => {
      buf += s;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
        buf = buf.slice(nl + 1);
        if ('event' in msg) continue;
        if (stage === 0 && 'QMP' in msg) {
          c.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
          stage = 1;
        } else if (stage === 1 && 'return' in msg) {
          c.write(JSON.stringify(command) + '\n');
          stage = 2;
        } else if (stage === 2) {
          c.end();
          if ('error' in msg) reject(new Error(`QMP ${JSON.stringify(command)}: ${JSON.stringify(msg.error)}`));
          else resolve(msg.return as Record<string, unknown>);
        }
      }
    });
    c.once('error', reject);
  });
}

interface QemuSample {
  /** query-migrate's `downtime` (integer ms). */
  downtimeMs: number;
  /** The same from QEMU's trace events, to the microsecond (see tracedDowntime). */
  tracedDowntimeMs: number;
  totalMs: number;
  bytes: number;
  /** The same migration with the VM stopped first (`stop`, then migrate): it stays paused throughout. */
  stoppedTotalMs: number;
  restoreWallMs: number;
  /** Process start until QMP answers (QEMU's own start-up, before the incoming state is loaded). */
  startupMs: number;
  /** `-incoming defer`, QMP ready: from `migrate-incoming` to `query-status` running. */
  warmMs: number;
}

async function migrate(sock: string, file: string): Promise<Record<string, unknown>> {
  await qmp(sock, { execute: 'migrate', arguments: { uri: `exec:cat > ${file}` } });
  for (;;) {
    const info = await qmp(sock, { execute: 'query-migrate' });
    if (info.status === 'completed') return info;
    if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`QEMU migration ${info.status}: ${JSON.stringify(info)}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

async function qemu(dir: string, mem: number, vcpus: number, dirtyPages: number): Promise<QemuSample> {
  const sock = join(dir, 'qmp.sock');
  const file = join(dir, 'qemu.migration');
  const base = qemuArgs({ memoryMiB: mem, cpus: vcpus });
  const traceLog = join(dir, 'qemu-trace.log');
  const vm = new Proc('qemu-system-x86_64', [...base, '-qmp', `unix:${sock},server=on,wait=off`, ...QEMU_DOWNTIME_TRACE(traceLog)]);
  try {
    await vm.until(() => vm.out.endsWith(PROMPT), 'QEMU boot');
    const dirtied = await vm.command(`mem dirty ${dirtyPages}`);
    if (!dirtied.includes(`mem dirty pages=${dirtyPages}`)) throw new Error(`mem dirty under QEMU: ${dirtied}`);
    const info = await migrate(sock, file);
    const tracedDowntimeMs = tracedDowntime(readFileSync(traceLog, 'latin1'));
    // After a completed migration the source is paused; run it again, then save it stopped.
    await qmp(sock, { execute: 'cont' });
    await qmp(sock, { execute: 'stop' });
    const stopped = await migrate(sock, join(dir, 'qemu-stopped.migration'));
    await vm.kill();
    await settle();
    const sock2 = join(dir, 'qmp2.sock');
    const restored = new Proc('qemu-system-x86_64', [...base, '-qmp', `unix:${sock2},server=on,wait=off`, '-incoming', `exec:cat ${file}`]);
    let cold: Omit<QemuSample, 'warmMs'>;
    try {
      let startupMs = 0;
      const wall = await (async () => {
        for (;;) {
          if (existsSync(sock2)) {
            const s = await qmp(sock2, { execute: 'query-status' }).catch(() => undefined);
            if (s && !startupMs) startupMs = performance.now() - restored.started;
            if (s?.status === 'running') return performance.now() - restored.started;
          }
          if (restored.child.exitCode !== null) throw new Error(`QEMU -incoming exited: ${restored.err}`);
          await new Promise((r) => setTimeout(r, 1));
        }
      })();
      const alive = await restored.command('info', 30_000);
      if (!alive.includes('info cpus=')) throw new Error(`the restored QEMU guest does not answer: ${alive}`);
      cold = {
        downtimeMs: info.downtime as number, tracedDowntimeMs, totalMs: info['total-time'] as number, bytes: statSync(file).size,
        stoppedTotalMs: stopped['total-time'] as number, restoreWallMs: wall, startupMs,
      };
    } finally {
      await restored.kill();
    }
    await settle();
    return { ...cold, warmMs: await qemuWarm(dir, base, file) };
  } finally {
    await vm.kill();
  }
}

/**
 * The pause alone, many times per boot (`--pause-runs N`): after a full snapshot, N rounds of
 * `mem dirty` then a diff snapshot, each diff over the one before. Each sample: our pause and its
 * steps (the snapshot's own timeline).
 */
async function oursPauses(dir: string, mem: number, vcpus: number, dirtyPages: number, n: number, cli = MAIN): Promise<Array<{ pauseMs: number; steps: PauseStep[] }>> {
  const sock = join(dir, 'vm.sock');
  const vm = new Proc(process.execPath, [...(cli === MAIN ? NODE_OPTIONS : lifeboatNodeOptions(resolve(dirname(cli), '..', '..', '..'))), cli, 'vm', 'run', '--mem', String(mem), '--vcpus', String(vcpus), '--api-sock', sock], vmmEnv());
  const out: Array<{ pauseMs: number; steps: PauseStep[] }> = [];
  try {
    await vm.until(() => vm.out.endsWith(PROMPT), 'boot');
    await op(sock, { op: 'snapshot.create', kind: 'full', out: join(dir, 'full') });
    rmSync(join(dir, 'full'), { recursive: true, force: true }); // the diffs' base is the VMM's record of it, not the files
    for (let i = 0; i < n; i++) {
      const dirtied = await vm.command(`mem dirty ${dirtyPages}`);
      if (!dirtied.includes(`mem dirty pages=${dirtyPages}`)) throw new Error(`mem dirty: ${dirtied}`);
      const diff = await op(sock, { op: 'snapshot.create', kind: 'diff', out: join(dir, `diff-${i}`) });
      out.push({ pauseMs: diff.pauseMs as number, steps: (diff.pauseSteps as PauseStep[] | undefined) ?? [] });
      rmSync(join(dir, `diff-${i}`), { recursive: true, force: true });
    }
    return out;
  } finally {
    await vm.kill();
  }
}

/**
 * QEMU's downtime at microsecond resolution, from its own trace events (log backend, `-msg
 * timestamp=on`): from `runstate_set` into finish-migrate (the stop request: its vCPUs are paused
 * next) to `migrate_set_state` into completed (the state saved; what query-migrate's integer
 * `downtime` counts, give or take its rounding).
 */
async function qemuPauses(dir: string, mem: number, vcpus: number, dirtyPages: number, n: number): Promise<Array<{ downtimeMs: number; tracedMs: number }>> {
  const sock = join(dir, 'qmp-pause.sock');
  const log = join(dir, 'qemu-trace.log');
  const base = qemuArgs({ memoryMiB: mem, cpus: vcpus });
  const vm = new Proc('qemu-system-x86_64', [...base, '-qmp', `unix:${sock},server=on,wait=off`, ...QEMU_DOWNTIME_TRACE(log)]);
  const out: Array<{ downtimeMs: number; tracedMs: number }> = [];
  try {
    await vm.until(() => vm.out.endsWith(PROMPT), 'QEMU boot');
    for (let i = 0; i < n; i++) {
      const dirtied = await vm.command(`mem dirty ${dirtyPages}`);
      if (!dirtied.includes(`mem dirty pages=${dirtyPages}`)) throw new Error(`mem dirty under QEMU: ${dirtied}`);
      const from = existsSync(log) ? statSync(log).size : 0;
      const file = join(dir, `qemu-${i}.migration`);
      const info = await migrate(sock, file);
      await qmp(sock, { execute: 'cont' });
      rmSync(file, { force: true });
      out.push({ downtimeMs: info.downtime as number, tracedMs: tracedDowntime(readFileSync(log, 'latin1').slice(from)) });
    }
    return out;
  } finally {
    await vm.kill();
  }
}

/** QEMU options for tracedDowntime: the two trace events, with timestamps, into `log`. */
const QEMU_DOWNTIME_TRACE = (log: string) => ['-msg', 'timestamp=on', '-D', log, '-trace', 'enable=runstate_set', '-trace', 'enable=migrate_set_state'];

/** Stop (runstate -> finish-migrate) to completed, from a QEMU trace log with timestamps (PID@SEC.USEC:event ...). */
function tracedDowntime(log: string): number {
  const at = (re: RegExp) => {
    for (const line of log.split('\n')) {
      const m = /^\d+@(\d+)\.(\d{6}):(.*)$/.exec(line);
      if (m && re.test(m[3]!)) return Number(m[1]) * 1000 + Number(m[2]) / 1000;
    }
    throw new Error(`QEMU trace: no event matching ${re} in: ${log.slice(0, 600)}`);
  };
  return at(/^migrate_set_state new state completed\b/) - at(/^runstate_set .*new_state \d+ \(finish-migrate\)/);
}

interface Throughput {
  seqWrite: number;
  randWrite: number;
}

async function diskBench(dir: string, tracking: boolean): Promise<Throughput> {
  const disk = join(dir, `bench-${tracking ? 'on' : 'off'}.img`);
  writeFileSync(disk, '');
  truncateSync(disk, 256 * 1024 * 1024);
  const args = [...NODE_OPTIONS, MAIN, 'vm', 'run', '--mem', '256', '--disk', disk, '--exec', 'disk bench 0', ...(tracking ? [] : ['--no-track-changes'])];
  const vm = new Proc(process.execPath, args, vmmEnv());
  const code = await vm.exited;
  const m = /disk bench seq_read_mibps=\d+ seq_write_mibps=(\d+) rand_read_iops=\d+ rand_write_iops=(\d+)/.exec(vm.out);
  if (code !== 0 || !m) throw new Error(`disk bench (tracking ${tracking ? 'on' : 'off'}) failed: ${vm.out.slice(-300)} ${vm.err}`);
  rmSync(disk, { force: true });
  rmSync(disk + '.lifeboat-cbt', { force: true });
  return { seqWrite: Number(m[1]), randWrite: Number(m[2]) };
}

/** The write path's tracking cost, measured directly: beforeWrite + afterWrite of 4 KiB writes, ns each. */
async function observerCost(dir: string): Promise<number> {
  const { BlockChangeTracker } = await import('../vmm/tracking/block-tracker.js');
  const { ChangeTrackingObserver } = await import('../vmm/tracking/copy-before-write.js');
  const image = join(dir, 'observer.img');
  writeFileSync(image, '');
  truncateSync(image, 1024 * 2 ** 20);
  const tracker = BlockChangeTracker.open(image);
  const observer = new ChangeTrackingObserver(tracker.observerConfig());
  const n = 200_000;
  let x = 12345;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const offset = (x % 262144) * 4096;
    observer.beforeWrite(offset, 4096);
    observer.afterWrite(offset, 4096);
  }
  const ns = ((performance.now() - t0) * 1e6) / n;
  observer.close();
  tracker.close();
  return ns;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const fmt = (n: number, digits = 1) => n.toFixed(digits);
const mib = (b: number) => `${fmt(b / 2 ** 20)} MiB`;

/**
 * The same ioctls as a snapshot's pause, warm (`--pause-runs` also runs this): each repeated `n` times in a
 * tight loop on a 1 GiB VM with dirty logging and one vCPU (that has not run), on this thread. Within a
 * pause they cost more (cold caches, a vCPU thread just woken on another CPU); this is the lower bound.
 */
async function warmIoctlCosts(n: number): Promise<Array<{ name: string; vcpu: boolean; minUs: number; medianUs: number }>> {
  const { Kvm } = await import('../vmm/kvm/system.js');
  const { VcpuFd } = await import('../vmm/kvm/vcpu.js');
  const { GuestMemory } = await import('../vmm/memory.js');
  const { KVM_TSS_ADDR } = await import('../vmm/layout.js');
  const { enableDirtyLogging } = await import('../vmm/tracking/dirty-memory.js');
  const { AREA_TIMED, saveVcpuStateInto, VcpuStateArea, VCPU_STATE_AREA_BYTES } = await import('../vmm/vcpu-state.js');
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const memory = GuestMemory.create(2 ** 30);
  try {
    vm.createPlatform(KVM_TSS_ADDR);
    enableDirtyLogging(vm);
    vm.mapMemory(memory.regions, memory.shared.hostAddress, true);
    const vcpu = new VcpuFd(vm.createVcpu(0), 0);
    const area = new VcpuStateArea(new SharedArrayBuffer(VCPU_STATE_AREA_BYTES), 0);
    const msrs = kvm.msrIndexList();
    const xsave = kvm.xsave2Size();
    const samples = new Map<string, number[]>();
    const add = (name: string, us: number) => samples.set(name, [...(samples.get(name) ?? []), us]);
    const time = (name: string, f: () => void) => {
      const t = performance.now();
      f();
      add(name, (performance.now() - t) * 1000);
    };
    saveVcpuStateInto(vcpu, area, msrs, xsave); // the first save reads CPUID and finds the readable MSRs
    for (let i = 0; i < n; i++) {
      saveVcpuStateInto(vcpu, area, msrs, xsave);
      AREA_TIMED.slice(0, 9).forEach((name, k) => add(name, area.timing[k]!));
      time('GET_DIRTY_LOG', () => vm.getDirtyLog(0, memory.size / PAGE));
      time('GET_CLOCK', () => vm.getClock());
      time('GET_PIT2', () => vm.getPit2());
      time('GET_IRQCHIP x3', () => [0, 1, 2].forEach((chip) => vm.getIrqchip(chip)));
    }
    vcpu.close();
    return [...samples].map(([name, xs]) => ({ name, vcpu: !name.startsWith('GET_'), minUs: Math.min(...xs), medianUs: median(xs) }));
  } finally {
    memory.close();
    vm.close();
    kvm.close();
  }
}

/** `--pause-runs`: our pause and QEMU's downtime, N of each, ours and QEMU's alternating by boot. */
async function pauseReport(mem: number, vcpus: number, dirtyPages: number, n: number, withQemu: boolean, baselineCli?: string): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'lifeboat-bench-pause-'));
  const ours: Array<{ pauseMs: number; steps: PauseStep[] }> = [];
  const baseline: number[] = [];
  const theirs: Array<{ downtimeMs: number; tracedMs: number }> = [];
  const load = [loadavg()[0]!];
  try {
    // Boots of each in turn (4 rounds), so a change in the machine's load hits all alike.
    const rounds = Math.min(4, n);
    for (const take of Array.from({ length: rounds }, (_, r) => Math.floor((n * (r + 1)) / rounds) - Math.floor((n * r) / rounds))) {
      if (take === 0) continue;
      ours.push(...await oursPauses(dir, mem, vcpus, dirtyPages, take));
      if (baselineCli) baseline.push(...(await oursPauses(dir, mem, vcpus, dirtyPages, take, baselineCli)).map((p) => p.pauseMs));
      if (withQemu) theirs.push(...await qemuPauses(dir, mem, vcpus, dirtyPages, take));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  load.push(loadavg()[0]!);
  const lines = [`Pause alone: ${n} diff snapshots of one VM (${mem} MiB, ${vcpus} vCPUs, \`mem dirty ${dirtyPages}\` before each), load average ${load.map((l) => l.toFixed(1)).join(' -> ')}`, ''];
  const pauses = ours.map((o) => o.pauseMs);
  lines.push(`ours: pause median ${fmt(median(pauses), 3)} ms (min ${fmt(Math.min(...pauses), 3)}, max ${fmt(Math.max(...pauses), 3)})`);
  if (baseline.length) lines.push(`baseline (${baselineCli}): pause median ${fmt(median(baseline), 3)} ms (min ${fmt(Math.min(...baseline), 3)}, max ${fmt(Math.max(...baseline), 3)})`);
  if (theirs.length) {
    lines.push(`QEMU: downtime (QMP) median ${fmt(median(theirs.map((t) => t.downtimeMs)))} ms; traced stop-to-completed median ${fmt(median(theirs.map((t) => t.tracedMs)), 3)} ms ` +
      `(min ${fmt(Math.min(...theirs.map((t) => t.tracedMs)), 3)}, max ${fmt(Math.max(...theirs.map((t) => t.tracedMs)), 3)})`);
  }
  // The floor: the KVM ioctls a consistent snapshot cannot do without while paused, as measured in
  // each pause: every vCPU's state (the vCPUs read theirs in parallel), the VM's, the dirty log.
  const VCPU_IOCTLS = ['MP_STATE', 'REGS', 'SREGS', 'XSAVE', 'XCRS', 'DEBUGREGS', 'LAPIC', 'MSRS', 'VCPU_EVENTS'];
  const floors = ours.filter((o) => o.steps.some((st) => / vCPU \d+ MSRS$/.test(st.step))).map((o) => {
    const us = (is: (step: string) => boolean) => o.steps.filter((st) => is(st.step)).reduce((a, st) => a + st.us, 0);
    const perVcpu = Array.from({ length: vcpus }, (_, i) => VCPU_IOCTLS.reduce((a, name) => a + us((step) => step.trim() === `vCPU ${i} ${name}`), 0));
    const vmWide = us((step) => step.includes('KVM_GET_DIRTY_LOG') || step === VM_STATE_STEP);
    return { serial: perVcpu.reduce((a, b) => a + b, 0) + vmWide, parallel: Math.max(...perVcpu) + vmWide, vmWide, perVcpu: median(perVcpu) };
  });
  if (floors.length) {
    lines.push('', `ioctl floor (µs, medians over the pauses): per vCPU ${fmt(median(floors.map((f) => f.perVcpu)), 0)} (${VCPU_IOCTLS.join(', ')}), ` +
      `VM-wide ${fmt(median(floors.map((f) => f.vmWide)), 0)} (GET_DIRTY_LOG, then GET_CLOCK, GET_PIT2, GET_IRQCHIP x3 with their JS); ` +
      `all in a row ${fmt(median(floors.map((f) => f.serial)), 0)} (min ${fmt(Math.min(...floors.map((f) => f.serial)), 0)}), ` +
      `the vCPUs in parallel ${fmt(median(floors.map((f) => f.parallel)), 0)} (min ${fmt(Math.min(...floors.map((f) => f.parallel)), 0)})`);
  }
  const warm = await warmIoctlCosts(300);
  const sum = (vcpu: boolean, k: 'minUs' | 'medianUs') => warm.filter((w) => w.vcpu === vcpu).reduce((a, w) => a + w[k], 0);
  lines.push('', `the same ioctls warm (300 times each in a loop, µs, min/median): ${warm.map((w) => `${w.name} ${fmt(w.minUs)}/${fmt(w.medianUs)}`).join(', ')}; ` +
    `per vCPU ${fmt(sum(true, 'minUs'), 0)}/${fmt(sum(true, 'medianUs'), 0)}, VM-wide ${fmt(sum(false, 'minUs'), 0)}/${fmt(sum(false, 'medianUs'), 0)}: ` +
    `with ${vcpus} vCPUs in parallel ${fmt(sum(true, 'minUs') + sum(false, 'minUs'), 0)}/${fmt(sum(true, 'medianUs') + sum(false, 'medianUs'), 0)}, ` +
    `in a row ${fmt(vcpus * sum(true, 'minUs') + sum(false, 'minUs'), 0)}/${fmt(vcpus * sum(true, 'medianUs') + sum(false, 'medianUs'), 0)}`);
  lines.push('', '| step of our pause | median µs | min | max |', '| --- | --- | --- | --- |');
  const names: string[] = [];
  for (const o of ours) for (const st of o.steps) if (!names.includes(st.step)) names.push(st.step.replace(/\(\d+\)$/, '(N)'));
  for (const name of [...new Set(names)]) {
    const xs = ours.map((o) => o.steps.find((st) => st.step.replace(/\(\d+\)$/, '(N)') === name)?.us).filter((x): x is number => x !== undefined);
    lines.push(`| ${name} | ${fmt(median(xs), 0)} | ${Math.min(...xs)} | ${Math.max(...xs)} |`);
  }
  process.stdout.write(lines.join('\n') + '\n\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '3' }, 'throughput-runs': { type: 'string', default: '7' }, mem: { type: 'string', default: '1024' }, vcpus: { type: 'string', default: '2' },
      'dirty-percent': { type: 'string', default: '5' }, 'no-qemu': { type: 'boolean' }, 'no-throughput': { type: 'boolean' }, docs: { type: 'boolean' },
      'keep-node-extra-ca-certs': { type: 'boolean' }, 'pause-runs': { type: 'string', default: '0' }, 'baseline-cli': { type: 'string' }, help: { type: 'boolean' },
    },
  });
  if (values.help) {
    process.stdout.write('usage: node dist/scripts/bench-snapshot.js [--runs 3] [--mem 1024] [--vcpus 2] [--dirty-percent 5] [--no-qemu] [--no-throughput]\n' +
      '         [--throughput-runs 7] [--pause-runs N] [--docs] [--keep-node-extra-ca-certs]\n' +
      '--pause-runs N: before the runs, N diff snapshots of one booted VM (and N migrations of one QEMU), for the pause alone:\n' +
      '  medians of our pause and of each of its steps, and of QEMU\'s downtime (QMP, integer ms) and traced (microseconds).\n' +
      '--baseline-cli PATH (with --pause-runs): also another build\'s CLI (its src/cli/main.js), interleaved, e.g. the previous commit\'s.\n');
    return;
  }
  const pauseRuns = Number(values['pause-runs']);
  if (pauseRuns > 0) await pauseReport(Number(values.mem), Number(values.vcpus), Math.round((Number(values.mem) * 2 ** 20 / PAGE) * Number(values['dirty-percent']) / 100), pauseRuns, !values['no-qemu'], values['baseline-cli']);
  if (pauseRuns > 0 && Number(values.runs) === 0 && values['no-throughput']) return;
  keepCaCerts = values['keep-node-extra-ca-certs'] === true;
  const runs = Number(values.runs);
  const mem = Number(values.mem);
  const vcpus = Number(values.vcpus);
  const dirtyPages = Math.round((mem * 2 ** 20 / PAGE) * Number(values['dirty-percent']) / 100);
  const oursSamples: OursSample[] = [];
  const qemuSamples: QemuSample[] = [];
  const on: Throughput[] = [];
  const off: Throughput[] = [];
  for (let i = 0; i < runs; i++) {
    const dir = mkdtempSync(join(tmpdir(), 'lifeboat-bench-snap-'));
    try {
      oursSamples.push(await ours(dir, mem, vcpus, dirtyPages));
      if (!values['no-qemu']) qemuSamples.push(await qemu(dir, mem, vcpus, dirtyPages));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    process.stderr.write(`snapshot run ${i + 1}/${runs} done\n`);
  }
  let observerNs = 0;
  if (!values['no-throughput']) {
    const dir = mkdtempSync(join(tmpdir(), 'lifeboat-bench-cbt-'));
    try {
      // Interleaved, so a change in the machine's load hits both alike.
      for (let i = 0; i < Number(values['throughput-runs']); i++) {
        on.push(await diskBench(dir, true));
        off.push(await diskBench(dir, false));
      }
      observerNs = await observerCost(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  const o = (k: Exclude<keyof OursSample, 'pauseSteps'>) => median(oursSamples.map((s) => s[k]));
  const q = (k: keyof QemuSample) => median(qemuSamples.map((s) => s[k]));
  const lines = [
    '## Snapshots (issue 4)',
    '',
    `Measured by \`node dist/scripts/bench-snapshot.js --runs ${runs}\` on ${new Date().toISOString().slice(0, 10)}: the Lifeboat guest, ${mem} MiB, ${vcpus} vCPUs,`,
    `after \`mem dirty ${dirtyPages}\` (${values['dirty-percent']}% of memory). Medians of ${runs} runs; CLI ${BUNDLED ? 'bundled (npm run build)' : 'NOT bundled (tsc only)'}; host: ${cpus().length} cores (${cpus()[0]?.model ?? '?'}), PVM KVM,`,
    `load average ${loadavg()[0]!.toFixed(1)} at the end (other work shares this machine: absolute numbers are noisy)` +
      `${droppedCaCerts() ? '; NODE_EXTRA_CA_CERTS, set in this environment, removed from our VMM\'s' : ''}.`,
    'QEMU has no incremental snapshot to a file: its column is `migrate "exec:cat > FILE"` of the whole VM',
    '(QMP `query-migrate` downtime and total time; its downtime also from its trace events, runstate finish-migrate to migration completed, in',
    'microseconds) and `-incoming "exec:cat FILE"` until QMP `query-status` says running. Our pause: from the pause request to the vCPUs told to run again.',
    '',
    '| | Lifeboat (diff snapshot) | QEMU (migrate to file) | ratio |',
    '| --- | --- | --- | --- |',
  ];
  const row = (what: string, ours: string, theirs: string, ratio: string) => lines.push(`| ${what} | ${ours} | ${theirs} | ${ratio} |`);
  const hasQemu = qemuSamples.length > 0;
  row('pause (guest stopped)', `${fmt(o('pauseMs'), 2)} ms`, hasQemu ? `${fmt(q('tracedDowntimeMs'), 2)} ms traced (QMP \`downtime\`: ${fmt(q('downtimeMs'))} ms)` : '-',
    hasQemu ? `${fmt(q('tracedDowntimeMs') / o('pauseMs'))}x` : '-');
  row('snapshot time', `${fmt(o('totalMs'))} ms`, hasQemu ? `${fmt(q('totalMs'))} ms` : '-', hasQemu ? `${fmt(q('totalMs') / o('totalMs'))}x` : '-');
  row('snapshot size on disk', `${mib(o('diffBytes'))} (${o('diffPages')} pages)`, hasQemu ? mib(q('bytes')) : '-', hasQemu ? `${fmt(q('bytes') / o('diffBytes'))}x` : '-');
  row('pause if the VM is stopped for the whole save', '(n/a: never)', hasQemu ? `${fmt(q('stoppedTotalMs'))} ms` : '-', hasQemu ? `${fmt(q('stoppedTotalMs') / o('pauseMs'))}x` : '-');
  row('restore to running, from process start', `${fmt(o('restoreWallMs'))} ms`, hasQemu ? `${fmt(q('restoreWallMs'))} ms` : '-', hasQemu ? `${fmt(q('restoreWallMs') / o('restoreWallMs'))}x` : '-');
  row('  of which process start-up', `${fmt(o('startupMs'))} ms (Node, the CLI and VMM code)`, hasQemu ? `${fmt(q('startupMs'))} ms (to QMP)` : '-', '-');
  row('  of which restoring', `${fmt(o('restoreVmmMs'))} ms (snapshot, VM, state, vCPUs)`, hasQemu ? `${fmt(q('restoreWallMs') - q('startupMs'))} ms (load stream)` : '-',
    hasQemu ? `${fmt((q('restoreWallMs') - q('startupMs')) / o('restoreVmmMs'))}x` : '-');
  row('    of which opening the snapshot chain', `${fmt(o('openMs'))} ms (${o('mappedRanges')} diff ranges mapped, ${o('copiedRanges')} copied)`, '-', '-');
  row('restore to running, warm (process started beforehand)', `${fmt(o('warmMs'))} ms (standby: request to answer; ${fmt(o('warmVmmMs'))} ms inside it)`,
    hasQemu ? `${fmt(q('warmMs'))} ms (\`-incoming defer\`: migrate-incoming to running)` : '-', hasQemu ? `${fmt(q('warmMs') / o('warmMs'))}x` : '-');
  row('checksums verified, after running', `${fmt(o('verifyMs'))} ms (every page run of the chain; disk requests wait for it, the vCPUs do not)`, '-', '-');
  lines.push('');
  const met = (ok: boolean) => (ok ? 'met' : '**NOT met**');
  lines.push(`Bars: diff snapshot pause < 50 ms: ${met(o('pauseMs') < 50)}; restore to running < 100 ms: ${met(o('restoreWallMs') < 100)} from process start ` +
    `(${met(o('restoreVmmMs') < 100)} inside the VMM, ${met(o('warmMs') < 100)} warm)` +
    (hasQemu ? `; 5x better than QEMU: pause ${met(q('tracedDowntimeMs') / o('pauseMs') >= 5)} against its live migration (${met(q('stoppedTotalMs') / o('pauseMs') >= 5)} against a stopped save), ` +
      `restore ${met(q('restoreWallMs') / o('restoreWallMs') >= 5)} from process start (${met((q('restoreWallMs') - q('startupMs')) / o('restoreVmmMs') >= 5)} comparing the restore work alone), ` +
      `${met(q('warmMs') / o('warmMs') >= 5)} warm.` : '.'));
  if (on.length) {
    const seqOn = median(on.map((t) => t.seqWrite));
    const seqOff = median(off.map((t) => t.seqWrite));
    const randOn = median(on.map((t) => t.randWrite));
    const randOff = median(off.map((t) => t.randWrite));
    lines.push('', `Guest disk writes (\`disk bench 0\`, 256 MiB disk), medians of ${on.length} interleaved runs with changed-block tracking on and off:`, '',
      '| | tracking off | tracking on | overhead |', '| --- | --- | --- | --- |',
      `| sequential write | ${seqOff} MiB/s | ${seqOn} MiB/s | ${fmt((1 - seqOn / seqOff) * 100)}% |`,
      `| random write | ${randOff} IOPS | ${randOn} IOPS | ${fmt((1 - randOn / randOff) * 100)}% |`, '',
      `The tracking work itself, measured in-process: ${fmt(observerNs, 0)} ns per write (beforeWrite + afterWrite), ` +
      `${fmt((observerNs / 1000) / (1e6 / randOff) * 100, 2)}% of a guest random write at ${randOff} IOPS.`, '',
      `Bar: overhead < 5%: ${(1 - seqOn / seqOff) < 0.05 && (1 - randOn / randOff) < 0.05 ? 'met' : 'NOT met'} on the guest medians of ${on.length} interleaved runs each.`);
  }
  const report = lines.join('\n') + '\n';
  process.stdout.write(report);
  if (values.docs) {
    const path = join(projectRoot(), 'docs', 'benchmarks.md');
    const old = existsSync(path) ? readFileSync(path, 'utf8') : '# Benchmarks\n';
    const start = old.indexOf('## Snapshots (issue 4)');
    let next = start < 0 ? -1 : old.indexOf('\n## ', start + 1);
    if (next >= 0) next += 1;
    const updated = start < 0 ? `${old.trimEnd()}\n\n${report}` : `${old.slice(0, start)}${report}${next >= 0 ? '\n' + old.slice(next) : ''}`;
    writeFileSync(path, updated);
  }
}

await main();
